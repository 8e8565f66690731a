//! A closed-loop HTTP client for the restart tests, run inside a pod: an
//! application that knows nothing of the proxy.
//!
//! `loop-client ADDR HOST CONNS MAX_SECS [HEADER...]` runs CONNS loops, each
//! sending `GET /` with `Host: HOST` to ADDR (and the extra header lines) and reading the
//! answer before the next, until a line (or the end) arrives on stdin or
//! MAX_SECS pass. Even loops open a connection per request; odd ones keep
//! theirs alive and, as HTTP clients do, send a request again on a new
//! connection when a reused one closed before any byte of the answer (a
//! GET may be sent twice, RFC 9110 §9.2.2). On exit it prints one JSON
//! line: `{"ok":N,"failed":N,"resent":N,"bodies":{"<body>":N},"errors":[...]}`
//! (at most 20 errors listed).

use std::{
    collections::BTreeMap,
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    resent: u64,
    bodies: BTreeMap<String, u64>,
    errors: Vec<String>,
}

/// Why an exchange failed: before any byte of the answer (a reused
/// connection may have been closed under us) or after.
enum Failure {
    NothingRead(String),
    Other(String),
}

fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<(String, bool), Failure> {
    stream
        .write_all(request)
        .map_err(|e| Failure::NothingRead(format!("write: {e}")))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(Failure::NothingRead("closed".into())),
            Ok(0) => return Err(Failure::Other("closed mid-answer".into())),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if buf.is_empty() => return Err(Failure::NothingRead(format!("read: {e}"))),
            Err(e) => return Err(Failure::Other(format!("read: {e}"))),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(Failure::Other(format!("bad answer: {e}"))),
        };
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let Some(len) = header("content-length").and_then(|v| v.trim().parse::<usize>().ok())
        else {
            return Err(Failure::Other("an answer without Content-Length".into()));
        };
        if buf.len() < head_len + len {
            continue;
        }
        let status = resp.code.unwrap_or(0);
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body = String::from_utf8_lossy(&buf[head_len..head_len + len]).into_owned();
        if status != 200 {
            return Err(Failure::Other(format!("status {status}: {body}")));
        }
        return Ok((body, close));
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn run_loop(
    addr: SocketAddr,
    request: Vec<u8>,
    keep_alive: bool,
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let reused = conn.is_some();
        let outcome = (|| {
            let mut stream = match conn.take() {
                Some(s) => s,
                None => connect(addr).map_err(|e| Failure::Other(format!("connect: {e}")))?,
            };
            let (body, close) = exchange(&mut stream, &request)?;
            if keep_alive && !close {
                conn = Some(stream);
            }
            Ok(body)
        })();
        let outcome = match outcome {
            Err(Failure::NothingRead(why)) if reused => {
                let _ = why;
                tally.lock().unwrap().resent += 1;
                connect(addr)
                    .map_err(|e| format!("connect: {e}"))
                    .and_then(|mut s| match exchange(&mut s, &request) {
                        Ok((body, close)) => {
                            if !close {
                                conn = Some(s);
                            }
                            Ok(body)
                        }
                        Err(Failure::NothingRead(e) | Failure::Other(e)) => Err(e),
                    })
            }
            Err(Failure::NothingRead(e) | Failure::Other(e)) => Err(e),
            Ok(body) => Ok(body),
        };
        let mut t = tally.lock().unwrap();
        match outcome {
            Ok(body) => {
                t.ok += 1;
                *t.bodies.entry(body).or_default() += 1;
            }
            Err(e) => {
                t.failed += 1;
                if t.errors.len() < 20 {
                    t.errors.push(e);
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, host, conns, max_secs, headers @ ..] = args.as_slice() else {
        eprintln!("usage: loop-client ADDR HOST CONNS MAX_SECS [HEADER...]");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR");
    let conns: usize = conns.parse().expect("CONNS");
    let max = Duration::from_secs(max_secs.parse().expect("MAX_SECS"));
    let mut request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let started = Instant::now();
    let loops: Vec<_> = (0..conns)
        .map(|i| {
            let (stop, tally, request) =
                (stop.clone(), tally.clone(), request.clone().into_bytes());
            std::thread::spawn(move || run_loop(addr, request, i % 2 == 1, &stop, &tally))
        })
        .collect();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < max {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.join();
    }
    let t = tally.lock().unwrap();
    let out = serde_json::json!({
        "ok": t.ok,
        "failed": t.failed,
        "resent": t.resent,
        "bodies": t.bodies,
        "errors": t.errors,
        "secs": started.elapsed().as_secs_f64(),
    });
    println!("{out}");
}
