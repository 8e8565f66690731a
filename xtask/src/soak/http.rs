//! The soak's HTTP/1.1 client side: reading one response off a blocking
//! socket by its framing (Content-Length, chunked, or to the close),
//! skipping interim 1xx answers, against a deadline. Small and strict on
//! purpose: it is the referee of what the proxy sent, so it keeps what a
//! lenient client would paper over (a body cut short, a close after the
//! answer).

use std::{
    io::{self, Read},
    net::TcpStream,
    time::Instant,
};

use crate::bench::loadgen::find_head_end;

/// One final response.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The connection ended before the body its framing announced.
    pub truncated: bool,
    /// The server will close: it said `Connection: close`, or the body ran
    /// to the close.
    pub close: bool,
    /// Interim (1xx) responses skipped before this one.
    pub interim: usize,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A refusal the proxy made itself: `status` and an `l5d-err` saying why.
    pub fn is_proxy_error(&self, statuses: &[u16]) -> bool {
        statuses.contains(&self.status) && self.header("l5d-err").is_some()
    }

    /// One line for a failure message: status, `l5d-err`, the body's start.
    pub fn brief(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(80)]);
        format!(
            "status {} (l5d-err {:?}, {} body bytes{}): {body:?}",
            self.status,
            self.header("l5d-err"),
            self.body.len(),
            if self.truncated { ", truncated" } else { "" }
        )
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// The connection ended before the first byte of a response.
    Closed,
    /// Nothing complete by the deadline.
    Timeout,
    Io(io::Error),
    /// Something that is not an HTTP/1.1 response.
    Malformed(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => f.write_str("closed before any response byte"),
            ReadError::Timeout => f.write_str("no whole response before the deadline"),
            ReadError::Io(e) => write!(f, "read: {e}"),
            ReadError::Malformed(m) => write!(f, "malformed response: {m}"),
        }
    }
}

/// Reads more of `stream` into `buf`; returns how much came (0 at the end).
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<usize, ReadError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ReadError::Timeout);
    }
    stream.set_read_timeout(Some(left)).map_err(ReadError::Io)?;
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(ReadError::Timeout)
        }
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// Status and headers of a response head (without its blank line).
fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), ReadError> {
    let text = std::str::from_utf8(head).map_err(|_| ReadError::Malformed("not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Malformed(format!("status line {status_line:?}")));
    }
    let status = code
        .parse()
        .map_err(|_| ReadError::Malformed(format!("status line {status_line:?}")))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

/// Reads one final response (interim ones skipped) by `deadline`. `buf`
/// carries bytes read past a response to the next call.
pub fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Response, ReadError> {
    let mut interim = 0;
    let mut any = !buf.is_empty();
    loop {
        let end = loop {
            if let Some(end) = find_head_end(buf) {
                break end;
            }
            if buf.len() > 256 * 1024 {
                return Err(ReadError::Malformed("head over 256 KiB".into()));
            }
            if fill(stream, buf, deadline)? == 0 {
                return Err(if any {
                    ReadError::Malformed("closed inside a response head".into())
                } else {
                    ReadError::Closed
                });
            }
            any = true;
        };
        let (status, headers) = parse_head(&buf[..end - 4])?;
        buf.drain(..end);
        if (100..200).contains(&status) && status != 101 {
            interim += 1;
            continue;
        }
        let mut r = Response {
            status,
            headers,
            interim,
            ..Response::default()
        };
        r.close = r
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = r.header("content-length").map(|v| v.parse::<usize>());
        if chunked {
            read_chunked(stream, buf, deadline, &mut r)?;
        } else if let Some(n) = length {
            let n = n.map_err(|_| ReadError::Malformed("bad Content-Length".into()))?;
            while buf.len() < n {
                if fill(stream, buf, deadline)? == 0 {
                    r.truncated = true;
                    break;
                }
            }
            let k = n.min(buf.len());
            r.body = buf.drain(..k).collect();
        } else if matches!(status, 204 | 304) {
        } else {
            // Delimited by the close.
            while fill(stream, buf, deadline)? > 0 {}
            r.body = std::mem::take(buf);
            r.close = true;
        }
        return Ok(r);
    }
}

/// Decodes a chunked body from `buf` (reading more as needed) into
/// `r.body`; a close before the last chunk marks it truncated.
fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    r: &mut Response,
) -> Result<(), ReadError> {
    // Waits for `want` bytes in `buf`; false at the close.
    let mut need = |buf: &mut Vec<u8>, want: &dyn Fn(&[u8]) -> bool| -> Result<bool, ReadError> {
        while !want(buf) {
            if fill(stream, buf, deadline)? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let line_end = |b: &[u8]| b.windows(2).position(|w| w == b"\r\n");
    loop {
        if !need(buf, &|b| line_end(b).is_some())? {
            r.truncated = true;
            return Ok(());
        }
        let end = line_end(buf).unwrap_or(0);
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ReadError::Malformed(format!("chunk size line {line:?}")))?;
        buf.drain(..end + 2);
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                if !need(buf, &|b| line_end(b).is_some())? {
                    r.truncated = true;
                    return Ok(());
                }
                let end = line_end(buf).unwrap_or(0);
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(());
                }
            }
        }
        if !need(buf, &|b| b.len() >= size + 2)? {
            r.body.extend_from_slice(buf);
            buf.clear();
            r.truncated = true;
            return Ok(());
        }
        r.body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write, net::TcpListener, time::Duration};

    /// Serves `bytes` on one connection and closes; returns the client end.
    fn serve(bytes: &'static [u8]) -> TcpStream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(bytes).unwrap();
        });
        TcpStream::connect(addr).unwrap()
    }

    fn read(bytes: &'static [u8]) -> Result<Response, ReadError> {
        let mut s = serve(bytes);
        let mut buf = Vec::new();
        read_response(&mut s, &mut buf, Instant::now() + Duration::from_secs(5))
    }

    #[test]
    fn framings() {
        let r =
            read(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
                .unwrap();
        assert_eq!(
            (r.status, r.interim, &r.body[..], r.truncated),
            (200, 1, &b"abc"[..], false)
        );
        let r = read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!((&r.body[..], r.truncated), (&b"abcde"[..], false));
        let r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").unwrap();
        assert!(r.truncated);
        let r = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc").unwrap();
        assert!(r.truncated);
        let r = read(b"HTTP/1.0 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!((&r.body[..], r.close), (&b"to the end"[..], true));
        let r = read(b"HTTP/1.1 502 Bad Gateway\r\nl5d-err: refused\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(r.is_proxy_error(&[502]) && r.close);
        assert!(matches!(read(b""), Err(ReadError::Closed)));
        assert!(matches!(
            read(b"HTTP/1.1 200"),
            Err(ReadError::Malformed(_))
        ));
    }
}
