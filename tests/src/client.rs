//! A raw HTTP/1.1 client for the tests: it writes exactly the bytes a test
//! gives and reads responses with its own small parser, so that what the
//! proxy does on the wire is what the test sees.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::backend::read_chunked;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Reads one response; `head_request` says the request was HEAD (no body).
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let mut head = Vec::new();
        loop {
            let n = self.reader.read_until(b'\n', &mut head)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed after {} head bytes", head.len()),
                ));
            }
            if head.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut slots);
        resp.parse(&head).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{e}: {:?}", String::from_utf8_lossy(&head)),
            )
        })?;
        let mut r = Response {
            status: resp.code.unwrap_or(0),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: Vec::new(),
        };
        if head_request || r.status == 204 || r.status == 304 || (100..200).contains(&r.status) {
            return Ok(r);
        }
        if r.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            r.body = read_chunked(&mut self.reader)?;
        } else if let Some(n) = r
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            r.body = vec![0; n];
            self.reader.read_exact(&mut r.body)?;
        } else {
            self.reader.read_to_end(&mut r.body)?;
        }
        Ok(r)
    }

    /// Exactly `buf.len()` bytes (after a response head: a tunnel's).
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.reader.read_exact(buf)
    }

    /// Whatever the server sends until it closes.
    pub fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.reader.read_to_end(&mut out)?;
        Ok(out)
    }

    /// `GET path` with `Host: host` and extra header lines (`Name: value`).
    pub fn get(&mut self, host: &str, path: &str, headers: &[&str]) -> Response {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.send(req.as_bytes()).expect("send request");
        self.read_response(false).expect("read response")
    }
}

/// Asserts an answer the proxy made itself: `status`, with an `l5d-err`
/// that contains `reason_part`.
pub fn assert_err(r: &Response, status: u16, reason_part: &str) {
    assert_eq!(r.status, status, "{:?} {}", r.headers, r.text());
    let err = r
        .header("l5d-err")
        .unwrap_or_else(|| panic!("no l5d-err on {status}: {:?}", r.headers));
    assert!(
        err.contains(reason_part),
        "l5d-err {err:?} lacks {reason_part:?}"
    );
}

/// One request on a new connection.
pub fn get(addr: SocketAddr, host: &str, path: &str, headers: &[&str]) -> Response {
    Client::connect(addr).get(host, path, headers)
}

/// Sends `request` on a new connection and reads until the proxy closes it:
/// everything that came back, as text.
pub fn until_close(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Starts an upload the proxy refuses at its head (a bad `l5d-dtab`) while
/// its body (a megabyte announced, 10 kB sent) is on the way, and reads the
/// answer, up to the proxy's close of its side. Returns the connection,
/// still open for writing, and the answer.
pub fn refused_upload(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: web\r\nl5d-dtab: /a =>\r\nContent-Length: 1000000\r\n\r\n",
    )
    .unwrap();
    s.write_all(&[b'x'; 10_000]).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    (s, String::from_utf8_lossy(&answer).into_owned())
}
