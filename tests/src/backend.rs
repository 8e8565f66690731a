//! A backend HTTP/1.1 server for the proxy tests, on plain threads and
//! sockets so that it shares nothing with the proxy's code.
//!
//! Every response names the backend (`x-backend` header). Paths:
//! - `/` and anything else: 200, a JSON body with the backend's name, the
//!   request line, every request header, and the length and FNV-1a of the
//!   request body.
//! - `/bytes/N`: N bytes of `pattern(N)` with Content-Length.
//! - `/chunked/N`: the same bytes in chunks of 7919 bytes.
//! - `/die/N`: announces 2N bytes, sends N, then closes.
//! - `/chunked-die/N`: chunked; announces a chunk of 2N bytes, sends N,
//!   then closes.
//! - `/slow/MS`: answers after MS milliseconds.
//! - `/status/N`: answers with status N (and a two-byte body).
//! - `/close`: answers with `Connection: close` and closes.
//! - `/then-close`: answers as keep-alive, then closes 20 ms later.
//! - a request with `Upgrade: echo`: 101, then echoes every byte back;
//!   CONNECT: 200, then the same.
//!
//! The server counts connections and requests, keeps the last
//! [`KEPT_REQUESTS`] requests it saw (`seen`), waits `delay_ms` before
//! every answer (0 unless a test sets it), and stops when dropped.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use crate::{Fnv64, pattern};

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub connections: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    /// The last requests seen, oldest first.
    pub seen: Arc<Mutex<std::collections::VecDeque<SeenRequest>>>,
    /// Milliseconds to wait before each answer.
    pub delay_ms: Arc<AtomicU64>,
}

/// Requests a backend keeps in `seen`.
pub const KEPT_REQUESTS: usize = 256;

/// What a backend's serving threads share.
#[derive(Clone)]
struct State {
    name: String,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<std::collections::VecDeque<SeenRequest>>>,
    delay_ms: Arc<AtomicU64>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1 (an ephemeral port).
    pub fn start(name: &str) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).expect("bind backend");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let state = State {
            name: name.to_owned(),
            requests: Arc::new(AtomicU64::new(0)),
            stop: stop.clone(),
            seen: Arc::default(),
            delay_ms: Arc::default(),
        };
        let b = Backend {
            name: name.to_owned(),
            addr,
            stop: stop.clone(),
            connections: connections.clone(),
            requests: state.requests.clone(),
            seen: state.seen.clone(),
            delay_ms: state.delay_ms.clone(),
        };
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        connections.fetch_add(1, Ordering::Relaxed);
                        let state = state.clone();
                        thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            // Responses go out in several writes: without this,
                            // Nagle and delayed ACKs add 40 ms to each.
                            let _ = s.set_nodelay(true);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                            let _ = serve(s, &state);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        b
    }

    pub fn fs_line(&self) -> String {
        format!("{} {}\n", self.addr.ip(), self.addr.port())
    }

    /// The requests seen so far (the last [`KEPT_REQUESTS`]), oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().iter().cloned().collect()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, state: &State) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let name = state.name.as_str();
    loop {
        if state.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(req) = read_request(&mut r, Some(&mut out))? else {
            return Ok(());
        };
        {
            let mut seen = state.seen.lock().unwrap();
            if seen.len() == KEPT_REQUESTS {
                seen.pop_front();
            }
            seen.push_back(req.clone());
        }
        let delay = state.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
        state.requests.fetch_add(1, Ordering::Relaxed);
        let path = req.target.clone();
        let connect = req.method == "CONNECT";
        if connect
            || req
                .header("upgrade")
                .is_some_and(|u| u.eq_ignore_ascii_case("echo"))
        {
            if connect {
                write!(
                    out,
                    "HTTP/1.1 200 Connection Established\r\nx-backend: {name}\r\n\r\n"
                )?;
            } else {
                write!(
                    out,
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\nx-backend: {name}\r\n\r\n"
                )?;
            }
            let mut buf = [0u8; 16384];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    out.shutdown(Shutdown::Write)?;
                    return Ok(());
                }
                out.write_all(&buf[..n])?;
            }
        }
        if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nContent-Length: {n}\r\n\r\n"
            )?;
            if req.method != "HEAD" {
                out.write_all(&pattern(n))?;
            }
        } else if let Some(n) = path
            .strip_prefix("/chunked/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nTransfer-Encoding: chunked\r\n\r\n"
            )?;
            for chunk in pattern(n).chunks(7919) {
                write!(out, "{:x}\r\n", chunk.len())?;
                out.write_all(chunk)?;
                out.write_all(b"\r\n")?;
            }
            out.write_all(b"0\r\n\r\n")?;
        } else if let Some(n) = path
            .strip_prefix("/chunked-die/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                2 * n
            )?;
            out.write_all(&pattern(n))?;
            out.flush()?;
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        } else if let Some(n) = path
            .strip_prefix("/die/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nContent-Length: {}\r\n\r\n",
                2 * n
            )?;
            out.write_all(&pattern(n))?;
            out.flush()?;
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        } else if path == "/then-close" {
            // Keep-alive by the headers, yet closed right after: what a
            // backend with a short idle timeout does to a pooled connection.
            write!(
                out,
                "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nContent-Length: 2\r\n\r\nok"
            )?;
            out.flush()?;
            thread::sleep(Duration::from_millis(20));
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        } else if let Some(status) = path
            .strip_prefix("/status/")
            .and_then(|n| n.parse::<u16>().ok())
        {
            write!(
                out,
                "HTTP/1.1 {status} Status\r\nx-backend: {name}\r\nContent-Length: 2\r\n\r\nno"
            )?;
        } else if path == "/close" {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
            )?;
            return Ok(());
        } else {
            if let Some(ms) = path
                .strip_prefix("/slow/")
                .and_then(|n| n.parse::<u64>().ok())
            {
                thread::sleep(Duration::from_millis(ms));
            }
            // Repeated fields are joined with ", " as RFC 9110 §5.3 allows.
            let mut headers = serde_json::Map::new();
            for (k, v) in &req.headers {
                match headers.get_mut(&k.to_ascii_lowercase()) {
                    Some(serde_json::Value::String(old)) => {
                        old.push_str(", ");
                        old.push_str(v);
                    }
                    _ => {
                        headers
                            .insert(k.to_ascii_lowercase(), serde_json::Value::String(v.clone()));
                    }
                }
            }
            let body = serde_json::json!({
                "backend": name,
                "method": req.method,
                "target": req.target,
                "headers": headers,
                "body_len": req.body.len(),
                "body_fnv": format!("{:016x}", Fnv64::of(&req.body)),
            })
            .to_string();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
        }
        out.flush()?;
    }
}

/// A request as the backend saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request (head and Content-Length or chunked body); `None` at a
/// clean end of the connection. When the request expects 100-continue and
/// `interim` is given, `100 Continue` is written there before the body is read.
pub fn read_request(
    r: &mut impl BufRead,
    interim: Option<&mut dyn Write>,
) -> io::Result<Option<SeenRequest>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            if head == b"\r\n" {
                head.clear();
                continue;
            }
            break;
        }
    }
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    req.parse(&head)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut seen = SeenRequest {
        method: req.method.unwrap_or("").to_owned(),
        target: req.path.unwrap_or("").to_owned(),
        headers,
        body: Vec::new(),
    };
    if seen
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        seen.body = read_chunked(r)?;
    } else if let Some(n) = seen
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        if seen
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && let Some(w) = interim
        {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        seen.body = vec![0; n];
        r.read_exact(&mut seen.body)?;
    }
    Ok(Some(seen))
}

/// Reads a chunked body, trailers included, and returns the data.
pub fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).map_err(
            |_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size line {line:?}"),
                )
            },
        )?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                r.read_line(&mut trailer)?;
                if trailer == "\r\n" || trailer.is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}
