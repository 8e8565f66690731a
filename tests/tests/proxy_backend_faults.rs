//! Backends that break the rules or die at awkward moments, scripted byte
//! by byte: whatever they do, no client gets another request's response, no
//! backend connection is reused out of step, a request that may have been
//! acted on is not sent twice, HTTP/1.0 clients get no interim responses,
//! and a body that stops moving (either way) ends after
//! `limits.body_timeout_ms` while a slow one that keeps moving does not.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use sidetrack_tests::{
    TempDir,
    client::{self, Client, Response},
    proxy::Proxy,
};

/// What the scripted backend does with one request.
enum Reply {
    /// Writes these bytes (in one write) and reads the next request.
    Send(&'static [u8]),
    /// Writes these bytes before reading the request's body, then reads
    /// on (taking whatever comes next as the next request).
    SendBeforeBody(&'static [u8]),
    /// Reads the body, then closes without a word.
    Close,
    /// Writes these bytes at once and closes with the body unread (the
    /// kernel answers what comes next with a reset).
    Refuse(&'static [u8]),
    /// Reads the body and never answers (reads on until the proxy closes).
    Silent,
    /// Reads the body, then writes these bytes every 10 ms, for at most 5 s
    /// or until a write fails, and closes.
    Every10Ms(&'static [u8]),
}

/// A request as the scripted backend saw it: on which of its connections
/// (0 for the first accepted), and its request line.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    conn: usize,
    line: String,
}

/// A backend on loopback that answers as `script(conn, nth request on that
/// connection, request line)` says; stops when dropped.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Scripted {
    fn start(script: fn(usize, usize, &str) -> Reply) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            let mut conn = 0;
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let seen = seen2.clone();
                        let n = conn;
                        conn += 1;
                        thread::spawn(move || serve(s, n, script, &seen));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Scripted { addr, seen, stop }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    s: TcpStream,
    conn: usize,
    script: fn(usize, usize, &str) -> Reply,
    seen: &Mutex<Vec<Seen>>,
) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for nth in 0.. {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_owned();
        let mut length = 0usize;
        loop {
            let mut field = String::new();
            if r.read_line(&mut field).unwrap_or(0) == 0 {
                return;
            }
            if field == "\r\n" {
                break;
            }
            if let Some((k, v)) = field.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        seen.lock().unwrap().push(Seen {
            conn,
            line: line.clone(),
        });
        let mut body = vec![0; length];
        match script(conn, nth, &line) {
            Reply::Send(bytes) => {
                if r.read_exact(&mut body).is_err() || out.write_all(bytes).is_err() {
                    return;
                }
            }
            Reply::SendBeforeBody(bytes) => {
                if out.write_all(bytes).is_err() {
                    return;
                }
            }
            Reply::Close => {
                let _ = r.read_exact(&mut body);
                return;
            }
            Reply::Refuse(bytes) => {
                let _ = out.write_all(bytes);
                return;
            }
            Reply::Silent => {
                if r.read_exact(&mut body).is_err() {
                    return;
                }
            }
            Reply::Every10Ms(bytes) => {
                let _ = r.read_exact(&mut body);
                for _ in 0..500 {
                    if out.write_all(bytes).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                return;
            }
        }
    }
}

/// A proxy routing `/svc/x` to the scripted backend.
fn proxy_to(b: &Scripted) -> (TempDir, Proxy) {
    proxy_with(b, "")
}

/// The same, with `config` as its config file.
fn proxy_with(b: &Scripted, config: &str) -> (TempDir, Proxy) {
    let dir = TempDir::new("faults");
    dir.write("x", &format!("127.0.0.1 {}\n", b.addr.port()));
    let proxy = Proxy::with_fs_namer(&dir, config, &[]);
    (dir, proxy)
}

fn send(c: &mut Client, request: &str) -> Response {
    c.send(request.as_bytes()).unwrap();
    c.read_response(false).unwrap()
}

/// A new client still gets the backend's `fresh` answer.
fn assert_serves_others(p: &Proxy) {
    let r = send(
        &mut Client::connect(p.addr),
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(r.text(), "fresh", "{:?}", r.headers);
}

const FRESH: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";

#[test]
fn bytes_after_a_response_are_not_the_next_response() {
    // The first answer carries a second, unasked-for response behind it.
    let b = Scripted::start(|conn, nth, _| {
        match (conn, nth) {
        (0, 0) => Reply::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
        ),
        _ => Reply::Send(FRESH),
    }
    });
    let (_dir, p) = proxy_to(&b);
    let mut c = Client::connect(p.addr);
    let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(send(&mut c, get).text(), "ok");
    assert_eq!(send(&mut c, get).text(), "fresh");
    // The connection that sent the stray bytes was not reused.
    let seen = b.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].conn, 1, "{seen:?}");
}

#[test]
fn a_backend_that_answered_before_the_body_is_not_pooled() {
    let b = Scripted::start(|_, _, line| {
        if line.starts_with("POST") {
            Reply::SendBeforeBody(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        } else {
            Reply::Send(FRESH)
        }
    });
    let (_dir, p) = proxy_to(&b);
    // The client waits for 100 Continue; the backend refuses at once.
    let mut c = Client::connect(p.addr);
    let r = send(
        &mut c,
        "POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    assert_eq!(r.status, 401);
    // Another client's request must not go down that connection, where the
    // backend may still be reading the first one's body.
    let r = send(
        &mut Client::connect(p.addr),
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(r.text(), "fresh");
    let seen = b.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1].conn, 1,
        "the GET went down the refused POST's connection: {seen:?}"
    );
}

/// The first request on the first connection is answered (so that the
/// connection is pooled); the second is read and met with a close.
fn answer_once_then_close(conn: usize, nth: usize, _: &str) -> Reply {
    match (conn, nth) {
        (0, 0) => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"),
        (0, _) => Reply::Close,
        _ => Reply::Send(FRESH),
    }
}

/// One GET answered (so that its connection is pooled), then `request` on a
/// new client connection, which the proxy sends down the pooled one, where
/// the backend reads it and closes.
fn after_a_pooled_answer(request: &str) -> (Scripted, Response) {
    let b = Scripted::start(answer_once_then_close);
    let (_dir, p) = proxy_to(&b);
    let mut c = Client::connect(p.addr);
    assert_eq!(
        send(&mut c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "first"
    );
    let r = send(&mut Client::connect(p.addr), request);
    (b, r)
}

#[test]
fn a_post_is_not_sent_twice_when_a_pooled_connection_closes_under_it() {
    let (b, r) =
        after_a_pooled_answer("POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(r.status, 502, "{:?} {}", r.headers, r.text());
    assert!(r.header("l5d-err").is_some(), "{:?}", r.headers);
    let posts = b
        .seen()
        .iter()
        .filter(|s| s.line.starts_with("POST"))
        .count();
    assert_eq!(posts, 1, "the POST reached the backend {posts} times");
}

#[test]
fn a_get_is_sent_again_when_a_pooled_connection_closes_under_it() {
    let (b, r) = after_a_pooled_answer("GET /again HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.text(), "fresh");
    let seen = b.seen();
    let again: Vec<usize> = seen
        .iter()
        .filter(|s| s.line.starts_with("GET /again"))
        .map(|s| s.conn)
        .collect();
    assert_eq!(again, [0, 1], "{seen:?}");
}

/// A backend that answers and then closes the connection (its end comes
/// right behind the answer's bytes): the next request, a POST (which is
/// never sent twice), goes on a new connection instead of the closed one.
#[test]
fn a_pooled_connection_the_backend_closed_is_not_reused() {
    let b = Scripted::start(|conn, _, _| match conn {
        0 => Reply::Refuse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"),
        _ => Reply::Send(FRESH),
    });
    let (_dir, p) = proxy_to(&b);
    let mut c = Client::connect(p.addr);
    assert_eq!(
        send(&mut c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "first"
    );
    // The backend's end reaches the proxy while the connection idles.
    thread::sleep(Duration::from_millis(50));
    let r = send(
        &mut c,
        "POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(r.status, 200, "{:?} {}", r.headers, r.text());
    assert_eq!(r.text(), "fresh");
    let posts: Vec<usize> = b
        .seen()
        .iter()
        .filter(|s| s.line.starts_with("POST"))
        .map(|s| s.conn)
        .collect();
    assert_eq!(posts, [1], "{:?}", b.seen());
}

#[test]
fn interim_responses_reach_http_1_1_clients_only_without_hop_by_hop_fields() {
    let b = Scripted::start(|_, _, _| {
        Reply::Send(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
    });
    let (_dir, p) = proxy_to(&b);
    let read_all = |request: &str| client::until_close(p.addr, request);
    let v11 = read_all("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // The hint goes on without what belonged to the hop it came over.
    assert!(
        v11.starts_with("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"),
        "{v11}"
    );
    assert!(
        v11.contains("\r\n\r\nHTTP/1.1 200 OK\r\n") && v11.ends_with("ok"),
        "{v11}"
    );
    let v10 = read_all("GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    assert!(v10.starts_with("HTTP/1.1 200 OK\r\n"), "{v10}");
    assert!(!v10.contains("103") && v10.ends_with("ok"), "{v10}");
}

const BODY_TIMEOUT: &str = "limits:\n  body_timeout_ms: 300\n";

fn body_timeouts(p: &Proxy) -> f64 {
    p.metric("sidetrack_errors_total", &[("kind", "body_timeout")])
}

/// Sends `head` and `first` body bytes, then nothing; returns the answer
/// and how long after the last byte it came.
fn stall_request(p: &Proxy, head: &str, first: usize) -> (Response, Duration) {
    let mut c = Client::connect(p.addr);
    c.send(head.as_bytes()).unwrap();
    c.send(&vec![b'a'; first]).unwrap();
    let stalled = Instant::now();
    let r = c.read_response(false).unwrap();
    (r, stalled.elapsed())
}

#[test]
fn a_request_body_that_stops_gets_408_copied_or_spliced() {
    let b = Scripted::start(|_, _, _| Reply::Send(FRESH));
    let (_dir, p) = proxy_with(&b, BODY_TIMEOUT);
    for (length, first) in [(10, 3), (1_000_000, 70_000)] {
        let head = format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
        let (r, after) = stall_request(&p, &head, first);
        assert_eq!(r.status, 408, "{length}: {:?} {}", r.headers, r.text());
        assert!(
            r.header("l5d-err").is_some_and(|e| e.contains("stalled")),
            "{:?}",
            r.headers
        );
        assert!(
            after >= Duration::from_millis(250) && after < Duration::from_secs(3),
            "{length}: answered {after:?} after the body stopped"
        );
        // Others are served meanwhile and after.
        assert_serves_others(&p);
    }
    assert_eq!(body_timeouts(&p), 2.0);
}

#[test]
fn a_slow_body_that_keeps_moving_is_not_cut_off() {
    let b = Scripted::start(|_, _, _| Reply::Send(FRESH));
    // 10 bytes a second, above a minimum rate of 5.
    let config = format!("{BODY_TIMEOUT}  body_min_bytes_per_sec: 5\n");
    let (_dir, p) = proxy_with(&b, &config);
    let mut c = Client::connect(p.addr);
    c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
        .unwrap();
    // 1.2 s in all, four times the timeout, a byte every 100 ms.
    for _ in 0..12 {
        thread::sleep(Duration::from_millis(100));
        c.send(b"z").unwrap();
    }
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "fresh", "{:?}", r.headers);
    assert_eq!(body_timeouts(&p), 0.0);
}

#[test]
fn a_response_body_that_stops_closes_the_client_connection() {
    // Announces 100 bytes, sends 10, then waits for a request that never comes.
    let b = Scripted::start(|_, _, _| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    });
    let (_dir, p) = proxy_with(&b, BODY_TIMEOUT);
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("0123456789"),
        "{text}"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert_eq!(body_timeouts(&p), 1.0);
}

#[test]
fn a_body_sent_without_waiting_for_100_continue_reaches_a_backend_that_never_sends_it() {
    // The backend reads the whole body before it answers, and sends no 100.
    let b = Scripted::start(|_, _, _| Reply::Send(FRESH));
    let (_dir, p) = proxy_to(&b);
    let mut c = Client::connect(p.addr);
    c.send(b"PUT /doc HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    // No 100 comes; like curl, the client sends the body after a while.
    thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    c.send(b"hello").unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "fresh", "{:?}", r.headers);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    // The connection goes on serving.
    assert_eq!(
        send(&mut c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "fresh"
    );
}

#[test]
fn a_backend_that_stops_taking_a_body_still_gets_the_client_an_answer() {
    // Refuses an upload at its head and closes with the body unread.
    let b = Scripted::start(|_, _, line| {
        if line.starts_with("POST") {
            Reply::Refuse(
                b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
        } else {
            Reply::Send(FRESH)
        }
    });
    let (_dir, p) = proxy_to(&b);
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let length = 8 << 20;
    s.write_all(
        format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    // The body goes on from another thread until the proxy stops reading.
    let mut w = s.try_clone().unwrap();
    let uploader = thread::spawn(move || {
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..length / chunk.len() {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    uploader.join().unwrap();
    let text = String::from_utf8_lossy(&answer);
    // The backend's own answer when it got through, else a 502 saying why:
    // never a silent close.
    assert!(
        text.starts_with("HTTP/1.1 413 ")
            || (text.starts_with("HTTP/1.1 502 ")
                && text.to_ascii_lowercase().contains("l5d-err:")),
        "{text:?}"
    );
    assert_serves_others(&p);
}

#[test]
fn a_repeated_content_length_reaches_the_client_as_one_value() {
    // Valid as received (RFC 9110 §8.6) but not to be forwarded so.
    let b = Scripted::start(|_, _, _| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok")
    });
    let (_dir, p) = proxy_to(&b);
    let text = client::until_close(
        p.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    let lengths: Vec<&str> = text
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .collect();
    assert_eq!(lengths, ["Content-Length: 2"], "{text}");
}

/// A response head over `max_head_bytes` (4 KiB in the test below).
fn oversized_head() -> &'static [u8] {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HEAD.get_or_init(|| {
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 5\r\n\r\nlarge",
            "b".repeat(8 * 1024)
        )
        .into_bytes()
    })
}

fn silent_or_oversized(_: usize, _: usize, line: &str) -> Reply {
    if line.starts_with("GET /silent ") {
        Reply::Silent
    } else if line.starts_with("GET /big ") {
        Reply::Send(oversized_head())
    } else {
        Reply::Send(FRESH)
    }
}

/// A backend that does not answer in time gets the client a 504 counted
/// as a timeout, not as a bad response; one whose response head is too
/// large gets a 502 that says it was the response's head.
#[test]
fn a_silent_backend_is_a_timeout_and_an_oversized_answer_a_response_head_too_large() {
    let b = Scripted::start(silent_or_oversized);
    let (_dir, p) = proxy_with(
        &b,
        "limits:\n  response_timeout_ms: 300\n  max_head_bytes: 4096\n",
    );
    let r = send(
        &mut Client::connect(p.addr),
        "GET /silent HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    client::assert_err(&r, 504, "did not answer");
    assert_eq!(
        p.metric("sidetrack_errors_total", &[("kind", "backend_timeout")]),
        1.0
    );
    assert_eq!(
        p.metric(
            "sidetrack_errors_total",
            &[("kind", "backend_bad_response")]
        ),
        0.0
    );
    let r = send(
        &mut Client::connect(p.addr),
        "GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(r.status, 502);
    let err = r.header("l5d-err").unwrap_or_default();
    assert!(err.contains("response head too large"), "{err}");
    assert!(!err.contains("request"), "{err}");
    assert_serves_others(&p);
}

fn processing_for_ever(_: usize, _: usize, line: &str) -> Reply {
    if line.starts_with("GET /processing ") {
        Reply::Every10Ms(b"HTTP/1.1 102 Processing\r\n\r\n")
    } else {
        Reply::Send(FRESH)
    }
}

/// Interim responses do not hold a client for ever: the response timeout
/// runs from the send to the final head however many come (504), and past
/// `max_interim_responses` the backend is out of bounds (502). The client
/// speaks HTTP/1.0, so the 102s are not relayed to it.
#[test]
fn interim_responses_neither_restart_the_response_timeout_nor_go_on_for_ever() {
    let b = Scripted::start(processing_for_ever);
    let request = "GET /processing HTTP/1.0\r\nHost: x\r\n\r\n";
    let (_dir, p) = proxy_with(
        &b,
        "limits:\n  response_timeout_ms: 300\n  max_interim_responses: 1000\n",
    );
    let r = send(&mut Client::connect(p.addr), request);
    assert_eq!(r.status, 504, "{:?}", r.headers);
    assert_eq!(
        p.metric("sidetrack_errors_total", &[("kind", "backend_timeout")]),
        1.0
    );
    drop(p);
    let (_dir, p) = proxy_with(&b, "limits:\n  max_interim_responses: 3\n");
    let r = send(&mut Client::connect(p.addr), request);
    assert_eq!(r.status, 502, "{:?}", r.headers);
    let err = r.header("l5d-err").unwrap_or_default();
    assert!(err.contains("more than 3 interim responses"), "{err}");
    assert_serves_others(&p);
}
