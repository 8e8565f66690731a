//! Every error the proxy answers itself carries `l5d-err`, gets the right
//! status, is counted, and leaves the proxy serving everyone else.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use sidetrack_tests::{
    TempDir,
    backend::Backend,
    client::{self, Client, Response},
    proxy::{Proxy, rss_kb},
};

struct Bed {
    _dir: TempDir,
    _web: Backend,
    proxy: Proxy,
}

fn bed(extra: &[&str]) -> Bed {
    let dir = TempDir::new("errors");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    dir.write("empty", "");
    // A port nobody listens on: bind, note, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    dir.write("dead", &format!("127.0.0.1 {}\n", dead.port()));
    let dtab = "/svc => /#/io.l5d.fs; /svc/failing => !; /svc/nothing => ~";
    let mut args = vec!["--dtab", dtab, "--fs-dir", dir.str()];
    args.extend_from_slice(extra);
    let proxy = Proxy::start(&args);
    Bed {
        _dir: dir,
        _web: web,
        proxy,
    }
}

fn raw(proxy: &Proxy, bytes: &[u8]) -> Response {
    let mut c = Client::connect(proxy.addr);
    c.send(bytes).unwrap();
    c.read_response(false).unwrap()
}

#[test]
fn refusals_have_their_status_and_l5d_err_and_are_counted() {
    let b = bed(&[]);
    let p = &b.proxy;
    client::assert_err(&raw(p, b"GARBAGE\r\n\r\n"), 400, "");
    client::assert_err(
        &client::get(p.addr, "web", "/", &["l5d-dtab: /a =>"]),
        400,
        "l5d-dtab",
    );
    // HTTP/1.1 requires Host (a framing error); HTTP/1.0 without it has no name.
    client::assert_err(&raw(p, b"GET / HTTP/1.1\r\n\r\n"), 400, "Host");
    client::assert_err(&raw(p, b"GET / HTTP/1.0\r\n\r\n"), 400, "Host");
    let long = format!("GET /{} HTTP/1.1\r\nHost: web\r\n\r\n", "a".repeat(9000));
    client::assert_err(&raw(p, long.as_bytes()), 414, "");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: web\r\nx-big: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    client::assert_err(&raw(p, big.as_bytes()), 431, "");
    client::assert_err(
        &client::get(p.addr, "unknown", "/", &[]),
        502,
        "/svc/unknown",
    );
    client::assert_err(&client::get(p.addr, "failing", "/", &[]), 502, "fail");
    client::assert_err(&client::get(p.addr, "nothing", "/", &[]), 502, "neg");
    client::assert_err(&client::get(p.addr, "empty", "/", &[]), 503, "no endpoints");
    client::assert_err(
        &client::get(p.addr, "dead", "/", &[]),
        502,
        "/#/io.l5d.fs/dead",
    );
    let vias: Vec<String> = (0..10).map(|i| format!("Via: 1.1 hop{i}")).collect();
    let via_refs: Vec<&str> = vias.iter().map(String::as_str).collect();
    client::assert_err(&client::get(p.addr, "web", "/", &via_refs), 508, "Via");

    for (kind, n) in [
        ("bad_request", 2.0),
        ("bad_dtab", 1.0),
        ("unidentified", 1.0),
        ("uri_too_long", 1.0),
        ("head_too_large", 1.0),
        ("bind_neg", 2.0),
        ("bind_failed", 1.0),
        ("no_endpoints", 1.0),
        ("loop", 1.0),
    ] {
        assert_eq!(
            p.metric("sidetrack_errors_total", &[("kind", kind)]),
            n,
            "errors of kind {kind}"
        );
    }
    assert!(p.metric("sidetrack_errors_total", &[("kind", "connect_failed")]) >= 1.0);
    // And the proxy still serves.
    assert_eq!(client::get(p.addr, "web", "/", &[]).status, 200);
}

#[test]
fn a_routing_refusal_keeps_a_bodiless_connection_open() {
    let b = bed(&[]);
    let mut c = Client::connect(b.proxy.addr);
    assert_eq!(c.get("unknown", "/", &[]).status, 502);
    assert_eq!(c.get("web", "/", &[]).status, 200);
}

/// A refusal to a client that asked to close says so and closes (RFC 9112
/// §9.6), as does one to an HTTP/1.0 client that did not ask to keep.
#[test]
fn a_routing_refusal_to_a_client_that_asked_to_close_closes() {
    let b = bed(&[]);
    for request in [
        "GET / HTTP/1.1\r\nHost: unknown\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: unknown\r\n\r\n",
    ] {
        // Read to the end: the proxy's close ends the read.
        let text = client::until_close(b.proxy.addr, request);
        assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{text}"
        );
    }
}

#[test]
fn a_slow_client_gets_408_and_does_not_hold_up_others() {
    let (_dir, _web, p) = Proxy::with_web_backend("slowloris", "limits:\n  head_timeout_ms: 300\n");
    // Slowloris: a head dribbled a byte at a time, never finished.
    let mut slow = TcpStream::connect(p.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    // Everyone else is served meanwhile.
    for _ in 0..5 {
        assert_eq!(client::get(p.addr, "web", "/", &[]).status, 200);
    }
    let mut resp = Vec::new();
    let _ = slow.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.to_ascii_lowercase().contains("l5d-err:"), "{text}");
    assert_eq!(
        p.metric("sidetrack_errors_total", &[("kind", "head_timeout")]),
        1.0
    );
}

/// A connection that says nothing is closed at the first-byte timeout,
/// not held for the idle timeout; one that spoke keeps the idle timeout.
#[test]
fn a_silent_new_connection_is_closed_at_the_first_byte_timeout() {
    let (_dir, _web, p) = Proxy::with_web_backend(
        "first-byte",
        "limits:\n  first_byte_timeout_ms: 200\n  idle_timeout_ms: 60000\n",
    );
    let mut silent = TcpStream::connect(p.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A client that served a request stays open past the first-byte timeout.
    let mut spoke = Client::connect(p.addr);
    assert_eq!(spoke.get("web", "/", &[]).status, 200);
    let mut got = Vec::new();
    // The proxy's close ends the read, with nothing sent: no 408 to a
    // client that asked nothing.
    silent.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(spoke.get("web", "/", &[]).status, 200);
}

/// Connections lingering after their 408 (the proxy reads and drops what
/// they still send until they close) hold no buffer each: they share
/// their worker's. Each held 64 KiB of its own before, 50 MB for these.
#[test]
fn lingering_connections_hold_no_buffer_of_their_own() {
    const SLOW: usize = 800;
    let (_dir, _web, p) = Proxy::with_web_backend(
        "linger-memory",
        "limits:\n  head_timeout_ms: 200\n  linger_ms: 10000\n",
    );
    // Warm: buffers and the route the first requests need.
    assert_eq!(client::get(p.addr, "web", "/", &[]).status, 200);
    let before = rss_kb(p.child.id());
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut s = TcpStream::connect(p.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // Every one gets its 408 and the proxy's end of the connection, and
    // then lingers (it keeps reading what comes, and nothing does).
    for s in &mut slow {
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        assert!(
            resp.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&resp)
        );
    }
    let lingering = rss_kb(p.child.id());
    let grew_mb = lingering.saturating_sub(before) as f64 / 1024.0;
    eprintln!("RSS {before} kB before, {lingering} kB with {SLOW} lingering: +{grew_mb:.1} MB");
    assert!(
        grew_mb < 32.0,
        "{SLOW} lingering connections took {grew_mb:.1} MB"
    );
    // And a client that sends the rest meanwhile is still read and dropped.
    slow[0].write_all(&[b'x'; 4096]).unwrap();
    assert_eq!(client::get(p.addr, "web", "/", &[]).status, 200);
}

#[test]
fn an_error_that_ends_the_connection_is_not_reset_under_the_client() {
    let b = bed(&[]);
    // Refused at its head (a bad l5d-dtab) while its body is on the way:
    // the body cannot be skipped, so the proxy answers and ends the
    // connection.
    let (mut s, text) = client::refused_upload(b.proxy.addr);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.to_ascii_lowercase().contains("l5d-err:"), "{text}");
    // A client still uploading is not reset meanwhile: the proxy goes on
    // reading (and dropping) what comes, so its close finds nothing unread
    // (a reset can destroy a response the client has not read yet).
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(&[b'x'; 10_000])
            .expect("the proxy reset the connection after its answer");
    }
}

#[test]
fn a_backend_dying_mid_chunked_body_for_an_http_1_0_client_is_counted() {
    let b = bed(&[]);
    let mut c = Client::connect(b.proxy.addr);
    // The body is decoded on the way; the close that should end it comes
    // early, so the client sees fewer bytes than the backend announced.
    c.send(b"GET /chunked-die/50000 HTTP/1.0\r\nHost: web\r\n\r\n")
        .unwrap();
    let raw = c.read_to_end().unwrap();
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the head went out");
    assert!(raw.starts_with(b"HTTP/1.1 200 "));
    let body = &raw[at + 4..];
    assert!(
        sidetrack_tests::pattern(50_000).starts_with(body),
        "the {} bytes that came are the data, decoded",
        body.len()
    );
    assert!(sidetrack_tests::eventually(5, || b
        .proxy
        .metric("sidetrack_errors_total", &[("kind", "backend_died")])
        == 1.0));
    assert_eq!(client::get(b.proxy.addr, "web", "/", &[]).status, 200);
}

#[test]
fn a_backend_dying_mid_body_closes_the_client_cleanly() {
    let b = bed(&[]);
    let mut c = Client::connect(b.proxy.addr);
    c.send(b"GET /die/100000 HTTP/1.1\r\nHost: web\r\n\r\n")
        .unwrap();
    let err = c
        .read_response(false)
        .err()
        .expect("the body cannot complete");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert!(sidetrack_tests::eventually(5, || b
        .proxy
        .metric("sidetrack_errors_total", &[("kind", "backend_died")])
        == 1.0));
    // Others are served.
    assert_eq!(client::get(b.proxy.addr, "web", "/", &[]).status, 200);
}

/// A request body that trickles a byte now and then never trips the
/// inactivity timeout; past a grace of one body timeout it must average
/// `limits.body_min_bytes_per_sec`, and one that falls behind gets 408.
#[test]
fn a_trickling_request_body_is_cut_when_it_falls_behind_the_minimum_rate() {
    let (_dir, _web, p) = Proxy::with_web_backend(
        "trickle",
        "limits:\n  body_timeout_ms: 1000\n  body_min_bytes_per_sec: 1000\n",
    );
    let mut slow = TcpStream::connect(p.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    // A byte every 300 ms (the 1 s inactivity timeout never passes): 30 s
    // for the whole body, were it let through. Bounded: 40 bytes at most,
    // and the writer stops when the proxy has closed.
    let mut writer = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(300));
            if writer.write_all(b"x").is_err() {
                break;
            }
        }
    });
    let mut resp = Vec::new();
    let _ = slow.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_min_bytes_per_sec"), "{text}");
    drop(slow);
    trickle.join().unwrap();
    assert_eq!(
        p.metric("sidetrack_errors_total", &[("kind", "body_timeout")]),
        1.0
    );
}
