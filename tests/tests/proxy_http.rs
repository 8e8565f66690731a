//! HTTP/1.1 through the proxy: keep-alive, pipelining, bodies of every
//! framing byte-exact, splice, 100-continue, upgrade tunnels.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use sidetrack_tests::{Fnv64, TempDir, backend::Backend, client::Client, pattern, proxy::Proxy};

/// Sends `n` pattern bytes through an established tunnel (in a thread, then
/// closes the sending side) and checks the echo that comes back.
fn assert_echoes(c: &mut Client, n: usize) {
    let data = pattern(n);
    let mut writer = c.stream().try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let echoed = c.read_to_end().unwrap();
    t.join().unwrap();
    assert!(
        echoed == data,
        "the echo through the tunnel differs ({} of {n} bytes)",
        echoed.len()
    );
}

fn proxy_to(backend: &Backend, extra: &[&str]) -> (TempDir, Proxy) {
    let dir = TempDir::new("http");
    dir.write("web", &backend.fs_line());
    let mut args = vec!["--dtab", "/svc => /#/io.l5d.fs", "--fs-dir", dir.str()];
    args.extend_from_slice(extra);
    let proxy = Proxy::start(&args);
    (dir, proxy)
}

#[test]
fn keep_alive_reuses_both_connections() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    for i in 0..50 {
        let r = c.get("web", &format!("/n/{i}"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["target"], format!("/n/{i}"));
    }
    assert_eq!(proxy.metric("sidetrack_connections_total", &[]), 1.0);
    assert_eq!(
        web.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one pooled backend connection"
    );
}

/// The backend closes each pooled connection 20 ms after answering on it;
/// the next request is a POST with a body, which a proxy may not send again
/// by itself (RFC 9110 §9.2.2): it must see that the pooled connection is
/// dead before sending, not after.
#[test]
fn a_pooled_connection_the_backend_closed_is_not_reused() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    let body = pattern(1000);
    let mut post = format!(
        "POST /after HTTP/1.1\r\nHost: web\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    post.extend_from_slice(&body);
    for _ in 0..5 {
        assert_eq!(c.get("web", "/then-close", &[]).status, 200);
        std::thread::sleep(std::time::Duration::from_millis(60));
        c.send(&post).unwrap();
        let r = c.read_response(false).unwrap();
        assert_eq!(
            r.status,
            200,
            "a dead pooled connection was used: {:?} {}",
            r.headers,
            r.text()
        );
        let seen = r.json();
        assert_eq!(seen["method"], "POST");
        assert_eq!(seen["body_fnv"], format!("{:016x}", Fnv64::of(&body)));
    }
}

#[test]
fn http_1_0_clients_keep_alive_only_when_asked() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    c.send(b"GET /a HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /b HTTP/1.0\r\nHost: web\r\n\r\n").unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.json()["target"], "/b");
    assert!(
        c.read_to_end().unwrap().is_empty(),
        "closed after a plain HTTP/1.0 request"
    );
}

#[test]
fn http_1_0_clients_get_chunked_responses_decoded() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    for n in [0usize, 5, 7919, 7920, 100_000] {
        let mut c = Client::connect(proxy.addr);
        // Even when asking to keep the connection: its end ends the body.
        c.send(
            format!("GET /chunked/{n} HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let raw = c.read_to_end().unwrap();
        let at = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            raw[at + 4..] == pattern(n)[..],
            "/chunked/{n}: {} bytes of body, want {n}",
            raw.len() - at - 4
        );
    }
    // The proxy read each chunked body to its exact end: the one backend
    // connection went back to the pool every time.
    assert_eq!(
        web.connections.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // HTTP/1.1 clients still get the chunks as they are.
    let r = Client::connect(proxy.addr).get("web", "/chunked/10", &[]);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.body == pattern(10));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    let mut batch = Vec::new();
    for i in 0..20 {
        // A slow one early on must not let later ones overtake it.
        let path = if i == 3 {
            "/slow/200".to_string()
        } else {
            format!("/p/{i}")
        };
        batch.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n").as_bytes());
    }
    batch
        .extend_from_slice(b"POST /p/body HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello");
    batch.extend_from_slice(b"GET /p/last HTTP/1.1\r\nHost: web\r\n\r\n");
    c.send(&batch).unwrap();
    for i in 0..20 {
        let want = if i == 3 {
            "/slow/200".to_string()
        } else {
            format!("/p/{i}")
        };
        assert_eq!(c.read_response(false).unwrap().json()["target"], want);
    }
    let post = c.read_response(false).unwrap().json();
    assert_eq!(
        (post["target"].as_str(), post["body_len"].as_u64()),
        (Some("/p/body"), Some(5))
    );
    assert_eq!(c.read_response(false).unwrap().json()["target"], "/p/last");
}

#[test]
fn bodies_of_every_framing_arrive_byte_exact() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    for n in [0usize, 1, 1000, 70_000, 3_000_000] {
        // Response: Content-Length and chunked.
        let r = c.get("web", &format!("/bytes/{n}"), &[]);
        assert_eq!(r.body.len(), n);
        assert!(r.body == pattern(n), "/bytes/{n} differs");
        let r = c.get("web", &format!("/chunked/{n}"), &[]);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert!(r.body == pattern(n), "/chunked/{n} differs");
        // Request: Content-Length.
        let body = pattern(n);
        c.send(format!("POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: {n}\r\n\r\n").as_bytes())
            .unwrap();
        c.send(&body).unwrap();
        let seen = c.read_response(false).unwrap().json();
        assert_eq!(seen["body_len"].as_u64(), Some(n as u64));
        assert_eq!(seen["body_fnv"], format!("{:016x}", Fnv64::of(&body)));
        // Request: chunked, in uneven chunks, with a trailer.
        let mut req =
            b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for chunk in body.chunks(12_345) {
            req.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
        c.send(&req).unwrap();
        let seen = c.read_response(false).unwrap().json();
        assert_eq!(
            seen["body_fnv"],
            format!("{:016x}", Fnv64::of(&body)),
            "chunked upload of {n}"
        );
    }
}

#[test]
fn large_known_length_bodies_are_spliced() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let before = proxy.metric("sidetrack_body_bytes_total", &[("mode", "spliced")]);
    let n = 8 << 20;
    let r = Client::connect(proxy.addr).get("web", &format!("/bytes/{n}"), &[]);
    assert!(r.body == pattern(n));
    let spliced = proxy.metric("sidetrack_body_bytes_total", &[("mode", "spliced")]) - before;
    // All but what arrived with the response head went through the pipe.
    assert!(
        spliced >= (n - 64 * 1024) as f64 && spliced <= n as f64,
        "spliced {spliced} of {n}"
    );
}

#[test]
fn expect_100_continue_is_relayed() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    c.send(b"PUT /up HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let interim = c.read_response(false).unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"data").unwrap();
    let done = c.read_response(false).unwrap();
    assert_eq!(done.json()["body_len"], 4);
}

#[test]
fn head_and_no_content_responses_have_no_body() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    c.send(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: web\r\n\r\n")
        .unwrap();
    let r = c.read_response(true).unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("1000")));
    // The connection is still in step: the next response parses.
    assert_eq!(
        c.get("web", "/after-head", &[]).json()["target"],
        "/after-head"
    );
}

#[test]
fn an_upgrade_becomes_a_byte_tunnel() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    c.send(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("echo"));
    assert_echoes(&mut c, 300_000);
}

#[test]
fn a_tunnel_is_closed_after_nothing_moves_for_the_idle_timeout() {
    let web = Backend::start("web");
    let dir = TempDir::new("tunnel-idle");
    dir.write("web", &web.fs_line());
    let proxy = Proxy::with_fs_namer(&dir, "limits:\n  tunnel_idle_timeout_ms: 300\n", &[]);
    let idled = || proxy.metric("sidetrack_errors_total", &[("kind", "tunnel_idle")]);
    let mut c = Client::connect(proxy.addr);
    c.send(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response(true).unwrap().status, 101);
    let moved = || {
        proxy.metric("sidetrack_body_bytes_total", &[("mode", "copied")])
            + proxy.metric("sidetrack_body_bytes_total", &[("mode", "spliced")])
    };
    let before = moved();
    // A byte each way every 100 ms for 1.2 s, four times the timeout:
    // the tunnel stays.
    for i in 0..12u8 {
        std::thread::sleep(Duration::from_millis(100));
        c.send(&[b'a' + i]).unwrap();
        let mut echo = [0u8];
        c.read_exact(&mut echo).unwrap();
        assert_eq!(echo[0], b'a' + i);
    }
    assert_eq!(idled(), 0.0);
    // Then nothing: the proxy closes it (within the sweeper's tick).
    let quiet = Instant::now();
    assert_eq!(c.read_to_end().unwrap(), b"");
    let took = quiet.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed {took:?} after the last byte"
    );
    assert_eq!(idled(), 1.0);
    // Its bytes are counted, though it did not end cleanly: 12 each way.
    assert_eq!(moved() - before, 24.0);
    // The proxy goes on serving.
    assert_eq!(Client::connect(proxy.addr).get("web", "/", &[]).status, 200);
}

#[test]
fn connect_becomes_a_byte_tunnel_to_the_routed_backend() {
    let web = Backend::start("web");
    let dir = TempDir::new("connect");
    dir.write("web", &web.fs_line());
    let proxy = Proxy::start(&[
        "--dtab",
        "/svc/web:443 => /#/io.l5d.fs/web",
        "--fs-dir",
        dir.str(),
    ]);
    let mut c = Client::connect(proxy.addr);
    c.send(b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n")
        .unwrap();
    let r = c.read_response(true).unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, Some("web")));
    assert_echoes(&mut c, 100_000);
}

#[test]
fn absolute_form_targets_are_routed_by_their_authority() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    // As an http_proxy client sends it: the authority wins over Host.
    c.send(b"GET http://web/a?b=c HTTP/1.1\r\nHost: other\r\n\r\n")
        .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["target"], "/a?b=c");
    let mut raw = [0u8; 1];
    c.stream().set_nonblocking(true).unwrap();
    assert!(c.stream().read(&mut raw).is_err(), "nothing more was sent");
}

/// RFC 9110 §2.5: a request in a later minor version of HTTP/1 is handled
/// as 1.1 (and forwarded as 1.1), not refused with 505; a major version
/// the proxy does not speak still is.
#[test]
fn a_later_minor_version_is_handled_as_1_1() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    c.send(b"GET /v12 HTTP/1.2\r\nHost: web\r\n\r\n").unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.json()["target"], "/v12");
    // Kept alive, as 1.1 is.
    assert_eq!(c.get("web", "/next", &[]).status, 200);
    let mut c = Client::connect(proxy.addr);
    c.send(b"GET / HTTP/3.0\r\nHost: web\r\n\r\n").unwrap();
    assert_eq!(c.read_response(false).unwrap().status, 505);
}

/// Max-Forwards (RFC 9110 §7.6.2): a TRACE or OPTIONS that may be
/// forwarded no further is answered by the proxy; one that may is
/// forwarded with one forward less; other methods pass it untouched.
#[test]
fn max_forwards_is_answered_at_0_and_decremented_on_trace_and_options() {
    let web = Backend::start("web");
    let (_dir, proxy) = proxy_to(&web, &[]);
    let mut c = Client::connect(proxy.addr);
    let send = |c: &mut Client, method: &str, forwards: &str| {
        c.send(
            format!("{method} /mf HTTP/1.1\r\nHost: web\r\nMax-Forwards: {forwards}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        c.read_response(method == "HEAD").unwrap()
    };
    let options = send(&mut c, "OPTIONS", "0");
    assert_eq!(options.status, 200);
    assert_eq!(options.header("x-backend"), None, "not forwarded");
    assert_eq!(options.header("allow"), Some("OPTIONS"));
    assert!(
        options
            .header("via")
            .is_some_and(|v| v.contains("sidetrack"))
    );
    let trace = send(&mut c, "TRACE", " 0 ");
    assert_eq!(trace.status, 405);
    assert_eq!(trace.header("x-backend"), None);
    assert!(
        trace
            .header("l5d-err")
            .is_some_and(|e| e.contains("Max-Forwards"))
    );
    // The same connection goes on: each answer kept it.
    let forwarded = send(&mut c, "OPTIONS", "3");
    assert_eq!(forwarded.header("x-backend"), Some("web"));
    assert_eq!(forwarded.json()["headers"]["max-forwards"], "2");
    let traced = send(&mut c, "TRACE", "1");
    assert_eq!(traced.json()["headers"]["max-forwards"], "0");
    // Other methods ignore it.
    let get = send(&mut c, "GET", "0");
    assert_eq!(get.header("x-backend"), Some("web"));
    assert_eq!(get.json()["headers"]["max-forwards"], "0");
}
