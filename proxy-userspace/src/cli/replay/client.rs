//! One replayed exchange: a blocking HTTP/1.1 client, one request per
//! connection (`Connection: close`), bounded in time (a deadline over
//! the whole exchange) and in what it reads.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

use crate::http::ChunkedScanner;

/// The most of an answer read; a longer body is cut (and compared by its
/// prefix).
const MAX_ANSWER: usize = 16 << 20;

/// An answer, its body without chunked coding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Resolves `host:port` once.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

/// Sends `request` to `addr` and reads the final answer, all within
/// `timeout`.
pub fn exchange(
    addr: SocketAddr,
    request: &[u8],
    head_request: bool,
    timeout: Duration,
) -> Result<Answer, String> {
    let deadline = Instant::now() + timeout;
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    let _ = conn.set_nodelay(true);
    conn.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    conn.write_all(request)
        .map_err(|e| format!("sending: {e}"))?;
    let mut buf = Vec::with_capacity(8 << 10);
    let mut chunk = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no whole answer within {timeout:?}"));
        }
        conn.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = match conn.read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no whole answer within {timeout:?}"));
            }
            Err(e) => return Err(format!("reading: {e}")),
        };
        if n > 0 {
            buf.extend_from_slice(&chunk[..n]);
        }
        let eof = n == 0 || buf.len() >= MAX_ANSWER;
        match parse(&buf, head_request, eof)? {
            Some(answer) => return Ok(answer),
            None if eof => return Err("the connection closed before a whole answer".into()),
            None => {}
        }
    }
}

/// The final answer in `buf`, once it is whole (`eof`: nothing more will
/// come); interim (1xx) answers are skipped.
pub fn parse(buf: &[u8], head_request: bool, eof: bool) -> Result<Option<Answer>, String> {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("not an HTTP answer: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let fields: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).trim().to_owned(),
                )
            })
            .collect();
        let rest = &buf[at + len..];
        if (100..200).contains(&status) && status != 101 {
            at += len;
            continue;
        }
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let no_body = head_request || status == 204 || status == 304 || status == 101;
        let body = if no_body {
            Some(Vec::new())
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            let mut scanner = ChunkedScanner::new();
            let mut out = Vec::new();
            scanner
                .decode(rest, |d| out.extend_from_slice(d))
                .map_err(|e| format!("a bad chunked body: {e}"))?;
            (scanner.is_done() || eof).then_some(out)
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if rest.len() >= n {
                Some(rest[..n].to_vec())
            } else {
                eof.then(|| rest.to_vec())
            }
        } else {
            eof.then(|| rest.to_vec())
        };
        return Ok(body.map(|body| Answer {
            status,
            headers: fields,
            body,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_whole_by_length_chunks_or_close_and_interims_skipped() {
        let a = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
            false,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hi"[..]));
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi",
                false,
                false
            ),
            Ok(None)
        );
        let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n";
        let a = parse(chunked, false, false).unwrap().unwrap();
        assert_eq!((a.status, a.body.as_slice()), (404, &b"no"[..]));
        assert_eq!(a.headers[0].0, "Transfer-Encoding");
        let close = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        assert_eq!(parse(close, false, false), Ok(None));
        assert_eq!(
            parse(close, false, true).unwrap().unwrap().body,
            b"all of it"
        );
        let head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false)
            .unwrap()
            .unwrap();
        assert!(head.body.is_empty());
        assert!(parse(b"SSH-2.0-x\r\n\r\n", false, true).is_err());
    }
}
