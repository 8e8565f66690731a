//! The soak's backends, `xtask app soak-backend LISTEN ROLE NAME`, a
//! thread per keep-alive connection. Every request body is read whole
//! (Content-Length or chunked) before the answer, and every answer carries
//! `x-backend: NAME` and `x-saw-proxy-authorization: yes|no` (the proxy
//! must not pass that header on). Roles:
//!
//! * `ok`: `POST /echo` answers the request body back; `GET /bytes/N` N
//!   bytes of [`pattern`] with a Content-Length, `GET /chunked/N` the same
//!   chunked; anything else the body NAME.
//! * `flaky`: announces twice the body it sends (`/die/N`: 2N, sends N),
//!   then closes: a backend that dies mid-response.
//! * `slow`: `/slow/MS` answers NAME after MS milliseconds (at most 10 s).
//! * `interim`: `102 Processing` every 10 ms, 40 of them, then NAME: more
//!   interim answers than the proxy relays.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use crate::apps::pattern;

/// A parsed request head and its body.
struct Request {
    method: String,
    target: String,
    proxy_authorization: bool,
    body: Vec<u8>,
}

pub fn main(args: &[String]) -> io::Result<()> {
    let [listen, role, name] = args else {
        return Err(io::Error::other(
            "usage: app soak-backend LISTEN ok|flaky|slow|interim NAME",
        ));
    };
    let serve: fn(&mut TcpStream, &Request, &str) -> io::Result<bool> = match role.as_str() {
        "ok" => serve_ok,
        "flaky" => serve_flaky,
        "slow" => serve_slow,
        "interim" => serve_interim,
        _ => return Err(io::Error::other(format!("no backend role {role:?}"))),
    };
    let listener = TcpListener::bind(listen)?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let name = name.clone();
        thread::spawn(move || connection(stream, &name, serve));
    }
    Ok(())
}

/// Serves requests until the client closes or `serve` says to stop.
fn connection(
    stream: TcpStream,
    name: &str,
    serve: fn(&mut TcpStream, &Request, &str) -> io::Result<bool>,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    // A stuck peer must not keep the thread for ever.
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader)? {
        if !serve(&mut out, &req, name)? {
            break;
        }
    }
    Ok(())
}

/// Reads one request; `None` when the connection ends first (also inside
/// a body: a client that gave up).
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("").to_owned();
    let target = words.next().unwrap_or("/").to_owned();
    let (mut length, mut chunked, mut proxy_authorization) = (0usize, false, false);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        if header == "\r\n" {
            break;
        }
        let Some((n, v)) = header.split_once(':') else {
            continue;
        };
        match n.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().unwrap_or(0),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "proxy-authorization" => proxy_authorization = true,
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size)? == 0 {
                return Ok(None);
            }
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers up to the blank line.
                loop {
                    let mut t = String::new();
                    if reader.read_line(&mut t)? == 0 || t == "\r\n" {
                        break;
                    }
                }
                break;
            }
            let at = body.len();
            body.resize(at + size + 2, 0);
            if reader.read_exact(&mut body[at..]).is_err() {
                return Ok(None);
            }
            body.truncate(at + size);
        }
    } else if length > 0 {
        body.resize(length, 0);
        if reader.read_exact(&mut body).is_err() {
            return Ok(None);
        }
    }
    Ok(Some(Request {
        method,
        target,
        proxy_authorization,
        body,
    }))
}

/// The head every answer starts with, up to its framing lines.
fn head(status: &str, req: &Request, name: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nx-backend: {name}\r\nx-saw-proxy-authorization: {}\r\n",
        if req.proxy_authorization { "yes" } else { "no" }
    )
}

/// A number after `prefix` in the target, capped.
fn number_after(target: &str, prefix: &str, cap: usize) -> Option<usize> {
    target
        .strip_prefix(prefix)?
        .split(['?', '/'])
        .next()?
        .parse::<usize>()
        .ok()
        .map(|n| n.min(cap))
}

fn serve_ok(out: &mut TcpStream, req: &Request, name: &str) -> io::Result<bool> {
    let mut msg = head("200 OK", req, name).into_bytes();
    if req.method == "POST" && req.target.starts_with("/echo") {
        write!(msg, "Content-Length: {}\r\n\r\n", req.body.len())?;
        msg.extend_from_slice(&req.body);
    } else if let Some(n) = number_after(&req.target, "/bytes/", 1 << 20) {
        write!(msg, "Content-Length: {n}\r\n\r\n")?;
        msg.extend_from_slice(&pattern(n));
    } else if let Some(n) = number_after(&req.target, "/chunked/", 1 << 20) {
        msg.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in pattern(n).chunks(7919) {
            write!(msg, "{:x}\r\n", chunk.len())?;
            msg.extend_from_slice(chunk);
            msg.extend_from_slice(b"\r\n");
        }
        msg.extend_from_slice(b"0\r\n\r\n");
    } else {
        write!(msg, "Content-Length: {}\r\n\r\n{name}", name.len())?;
    }
    out.write_all(&msg)?;
    Ok(true)
}

fn serve_flaky(out: &mut TcpStream, req: &Request, name: &str) -> io::Result<bool> {
    let n = number_after(&req.target, "/die/", 1 << 20).unwrap_or(1000);
    let mut msg = head("200 OK", req, name).into_bytes();
    write!(msg, "Content-Length: {}\r\n\r\n", 2 * n)?;
    msg.extend_from_slice(&pattern(n));
    out.write_all(&msg)?;
    Ok(false)
}

fn serve_slow(out: &mut TcpStream, req: &Request, name: &str) -> io::Result<bool> {
    let ms = number_after(&req.target, "/slow/", 10_000).unwrap_or(0);
    thread::sleep(Duration::from_millis(ms as u64));
    let msg = format!(
        "{}Content-Length: {}\r\n\r\n{name}",
        head("200 OK", req, name),
        name.len()
    );
    out.write_all(msg.as_bytes())?;
    Ok(true)
}

fn serve_interim(out: &mut TcpStream, req: &Request, name: &str) -> io::Result<bool> {
    for _ in 0..40 {
        // The proxy gives up after its cap and closes: stop there.
        if out.write_all(b"HTTP/1.1 102 Processing\r\n\r\n").is_err() {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(10));
    }
    serve_ok(out, req, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bodies_both_ways() {
        let text = "POST /echo HTTP/1.1\r\nContent-Length: 3\r\nProxy-Authorization: x\r\n\r\nabc\
                    POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1;e\r\nf\r\n0\r\n\r\n";
        let mut r = BufReader::new(text.as_bytes());
        let a = read_request(&mut r).unwrap().unwrap();
        assert_eq!(
            (a.body.as_slice(), a.proxy_authorization),
            (&b"abc"[..], true)
        );
        let b = read_request(&mut r).unwrap().unwrap();
        assert_eq!(
            (b.body.as_slice(), b.proxy_authorization),
            (&b"def"[..], false)
        );
        assert!(read_request(&mut r).unwrap().is_none());
        // A body cut short ends the connection quietly.
        let mut r = BufReader::new(&b"POST /echo HTTP/1.1\r\nContent-Length: 9\r\n\r\nab"[..]);
        assert!(read_request(&mut r).unwrap().is_none());
        assert_eq!(number_after("/slow/250?x", "/slow/", 10_000), Some(250));
        assert_eq!(
            number_after("/die/99999999", "/die/", 1 << 20),
            Some(1 << 20)
        );
    }
}
