//! HTTP/2 and gRPC through the proxy on loopback (docs/http2.md), with
//! real clients and servers: curl --http2-prior-knowledge, nghttp and
//! h2load (nghttp2-client), and grpcio (tests/grpc/peer.py).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sidetrack_tests::{
    TempDir,
    backend::Backend,
    eventually,
    grpc::{self, GrpcServer},
    proxy::{Proxy, rss_kb},
};

/// A proxy routing `/svc/<name>` through the file namer in `dir`.
fn proxy(dir: &TempDir, config: &str) -> Proxy {
    Proxy::with_fs_namer(dir, config, &[])
}

/// Runs a command, returning its standard output; fails on a bad exit.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run the client");
    assert!(out.status.success(), "{cmd:?}: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl_h2(proxy: SocketAddr, host: &str, path: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--http2-prior-knowledge",
        "--max-time",
        "10",
        "-D",
        "-",
    ])
    .args(["-H", &format!("Host: {host}")])
    .args(extra)
    .arg(format!("http://{proxy}{path}"));
    cmd
}

/// gRPC calls of every kind (unary, server streaming, client streaming,
/// bidirectional) pass, and the backend sees the l5d- fields and Via an
/// HTTP/1.1 request would carry.
#[test]
fn grpc_calls_of_every_kind_pass_through() {
    let dir = TempDir::new("h2-kinds");
    let world = GrpcServer::start("world-v1");
    dir.write("world", &world.fs_line());
    let proxy = proxy(&dir, "");
    let out = grpc::call(proxy.addr, "world", "kinds", "");
    let unary = &out["unary"];
    assert_eq!(unary["server"], "world-v1");
    assert_eq!(unary["echo"], "hi");
    assert_eq!(unary["dst_service"], "/svc/world");
    assert_eq!(unary["dst_client"], "/#/io.l5d.fs/world");
    assert_eq!(unary["via"], "2 sidetrack");
    assert_eq!(unary["reqid"].as_str().unwrap().len(), 16);
    assert_eq!(
        out["server_stream"],
        serde_json::json!([
            "world-v1 0",
            "world-v1 1",
            "world-v1 2",
            "world-v1 3",
            "world-v1 4"
        ])
    );
    assert_eq!(out["client_stream"], "world-v1 7 7000");
    assert_eq!(
        out["bidi"],
        serde_json::json!(["world-v1 x", "world-v1 y", "world-v1 z"])
    );
    let requests = proxy.metric(
        "sidetrack_requests_total",
        &[("service", "/svc/world"), ("dst", "/#/io.l5d.fs/world")],
    );
    assert_eq!(requests, 4.0);
    assert_eq!(proxy.metric("sidetrack_http2_streams_total", &[]), 4.0);
}

/// One call of a connection carries `l5d-dtab`: it alone goes to
/// world-v2 (and goes on with it as `l5d-ctx-dtab`), the calls before and
/// after it on the same connection stay on world-v1; the metrics count the
/// override apart.
#[test]
fn an_l5d_dtab_stages_one_call_while_the_others_on_the_connection_stay() {
    let dir = TempDir::new("h2-stage");
    let v1 = GrpcServer::start("world-v1");
    let v2 = GrpcServer::start("world-v2");
    dir.write("world-v1", &v1.fs_line());
    dir.write("world-v2", &v2.fs_line());
    let fs = dir.str().to_owned();
    let proxy = Proxy::start(&[
        "--fs-dir",
        &fs,
        "--dtab",
        "/svc=>/#/io.l5d.fs;/svc/world=>/#/io.l5d.fs/world-v1",
    ]);
    let out = grpc::call(proxy.addr, "world", "stage", "20");
    let answers = out["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 20);
    for (i, a) in answers.iter().enumerate() {
        if i == 10 {
            assert_eq!(a["server"], "world-v2", "{a}");
            assert_eq!(a["ctx_dtab"], "/svc/world=>/#/io.l5d.fs/world-v2");
            assert_eq!(a["dtab"], "", "l5d-dtab is not passed on");
        } else {
            assert_eq!(a["server"], "world-v1", "call {i}: {a}");
            assert_eq!(a["ctx_dtab"], "");
        }
    }
    assert_eq!(
        proxy.metric(
            "sidetrack_requests_total",
            &[("dst", "/#/io.l5d.fs/world-v2"), ("override", "true")]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric(
            "sidetrack_requests_total",
            &[("dst", "/#/io.l5d.fs/world-v1"), ("override", "false")]
        ),
        19.0
    );
}

/// Three gRPC backends share the calls of one client connection: each
/// call is routed and balanced on its own (one long-lived connection does
/// not pin a client to one backend). Through a weighted union of the
/// three (chosen per request), each share is within a binomial band
/// (n = 600, p = 1/3: 4.5 standard deviations); through one name with
/// the three addresses, P2C over peak-EWMA latency (not a uniform draw:
/// it leans to whichever measured faster) gives each a share.
#[test]
fn three_grpc_backends_share_one_connections_calls() {
    let dir = TempDir::new("h2-spread");
    let servers: Vec<_> = (0..3)
        .map(|i| GrpcServer::start(&format!("world-{i}")))
        .collect();
    for (i, s) in servers.iter().enumerate() {
        dir.write(&format!("world-{i}"), &s.fs_line());
    }
    let lines: String = servers.iter().map(GrpcServer::fs_line).collect();
    dir.write("world", &lines);
    let fs = dir.str().to_owned();
    let proxy = Proxy::start(&[
        "--fs-dir",
        &fs,
        "--dtab",
        "/svc=>/#/io.l5d.fs;/svc/union=>1*/#/io.l5d.fs/world-0 & 1*/#/io.l5d.fs/world-1 & 1*/#/io.l5d.fs/world-2",
    ]);
    let n = 600u64;
    let out = grpc::call(proxy.addr, "union", "spread", &n.to_string());
    let counts = out["counts"].as_object().unwrap();
    assert_eq!(counts.len(), 3, "{counts:?}");
    let sd = (n as f64 * (1.0 / 3.0) * (2.0 / 3.0)).sqrt();
    for (server, c) in counts {
        let c = c.as_u64().unwrap() as f64;
        assert!(
            (c - n as f64 / 3.0).abs() <= 4.5 * sd,
            "{server}: {c} of {n}: {counts:?}"
        );
    }
    let out = grpc::call(proxy.addr, "world", "spread", &n.to_string());
    let counts = out["counts"].as_object().unwrap();
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (server, c) in counts {
        assert!(
            c.as_u64().unwrap() >= n / 20,
            "{server}: {c} of {n}: {counts:?}"
        );
    }
}

/// curl, nghttp and h2load through the proxy, to an HTTP/1.1 backend: the
/// request is translated (origin form, Host from :authority), the l5d-
/// fields added, bodies both ways byte-exact; h2load's 100 streams on one
/// connection all answered.
#[test]
fn curl_nghttp_and_h2load_reach_an_http1_backend() {
    let dir = TempDir::new("h2-curl");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    let proxy = proxy(&dir, "");
    let head = run(&mut curl_h2(
        proxy.addr,
        "web",
        "/a?b=c",
        &["-o", "/dev/null"],
    ));
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.contains("via: 2 sidetrack"), "{head}");
    assert!(head.contains("x-backend: web"), "{head}");
    let seen = web.seen().pop().unwrap();
    assert_eq!(seen.header("l5d-dst-service"), Some("/svc/web"));
    assert_eq!(seen.header("l5d-dst-client"), Some("/#/io.l5d.fs/web"));
    assert_eq!(seen.header("host"), Some("web"));
    assert_eq!(seen.header("via"), Some("2 sidetrack"));

    // A body out and back: nghttp's POST, the backend's digest of it.
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'q'; 300_000]).unwrap();
    let out = run(Command::new("nghttp")
        .args(["-H", ":authority: web", "-d"])
        .arg(&body)
        .arg(format!("http://{}/post", proxy.addr)));
    let answer: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(answer["body_len"], 300_000, "{answer}");
    // A large response body, byte-exact.
    let out = Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-H", "Host: web"])
        .arg(format!("http://{}/bytes/1000000", proxy.addr))
        .output()
        .unwrap();
    assert_eq!(out.stdout, sidetrack_tests::pattern(1_000_000));

    let out = run(Command::new("h2load")
        .args([
            "-n",
            "2000",
            "-c",
            "1",
            "-m",
            "100",
            "-H",
            ":authority: web",
        ])
        .arg(format!("http://{}/", proxy.addr)));
    assert!(out.contains("2000 succeeded"), "{out}");
    assert!(out.contains("status codes: 2000 2xx"), "{out}");
}

/// Max-Forwards on HTTP/2, as on HTTP/1.1 (RFC 9110 §7.6.2): a TRACE or
/// OPTIONS at 0 is answered by the proxy (OPTIONS 200, TRACE 405, both
/// `Allow: OPTIONS`), one above goes on with one forward less, and other
/// methods pass it untouched.
#[test]
fn max_forwards_is_answered_at_0_and_decremented_over_http2() {
    let dir = TempDir::new("h2-maxfwd");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    let proxy = proxy(&dir, "");
    let ask = |method: &str, forwards: &str| {
        run(&mut curl_h2(
            proxy.addr,
            "web",
            "/mf",
            &["-X", method, "-H", &format!("Max-Forwards: {forwards}")],
        ))
    };
    let options = ask("OPTIONS", "0");
    assert!(options.starts_with("HTTP/2 200"), "{options}");
    assert!(options.contains("allow: OPTIONS"), "{options}");
    assert!(options.contains("via: 2 sidetrack"), "{options}");
    assert!(!options.contains("x-backend"), "not forwarded: {options}");
    let trace = ask("TRACE", "0");
    assert!(trace.starts_with("HTTP/2 405"), "{trace}");
    assert!(trace.contains("l5d-err: Max-Forwards"), "{trace}");
    assert!(!trace.contains("x-backend"), "not forwarded: {trace}");
    assert_eq!(web.requests(), 0);
    let forwarded = ask("OPTIONS", "3");
    assert!(forwarded.contains("x-backend: web"), "{forwarded}");
    assert_eq!(web.seen().pop().unwrap().header("max-forwards"), Some("2"));
    let traced = ask("TRACE", "1");
    assert!(traced.contains("x-backend: web"), "{traced}");
    assert_eq!(web.seen().pop().unwrap().header("max-forwards"), Some("0"));
    let get = ask("GET", "0");
    assert!(get.contains("x-backend: web"), "{get}");
    assert_eq!(web.seen().pop().unwrap().header("max-forwards"), Some("0"));
}

/// The proxy's own errors: a gRPC call gets a trailers-only response
/// with grpc-status (UNAVAILABLE for a name bound nowhere, a dead
/// backend) and grpc-message; another HTTP/2 request the status and
/// l5d-err HTTP/1.1 would get.
#[test]
fn proxy_errors_speak_the_clients_language() {
    let dir = TempDir::new("h2-errors");
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    dir.write("gone", &format!("127.0.0.1 {}\n", dead.port()));
    let proxy = proxy(&dir, "");
    let out = grpc::call(proxy.addr, "nothing", "unavailable", "");
    assert_eq!(out["error"]["code"], "UNAVAILABLE", "{out}");
    assert!(
        out["error"]["details"]
            .as_str()
            .unwrap()
            .contains("no route to /svc/nothing"),
        "{out}"
    );
    let out = grpc::call(proxy.addr, "gone", "unavailable", "");
    assert_eq!(out["error"]["code"], "UNAVAILABLE", "{out}");
    let head = run(&mut curl_h2(
        proxy.addr,
        "nothing",
        "/",
        &["-o", "/dev/null"],
    ));
    assert!(head.starts_with("HTTP/2 502"), "{head}");
    assert!(
        head.contains("l5d-err: no route to /svc/nothing: the name is not bound (neg)"),
        "{head}"
    );
    let head = run(&mut curl_h2(
        proxy.addr,
        "web",
        "/",
        &["-H", "l5d-dtab: /svc/web => !!", "-o", "/dev/null"],
    ));
    assert!(head.starts_with("HTTP/2 400"), "{head}");
    assert!(head.contains("l5d-err:"), "{head}");
}

/// A gRPC frame (uncompressed) holding `message`.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// `grpc-timeout` is the proxy's response timeout for the call: a backend
/// that takes longer gets the client DEADLINE_EXCEEDED from the proxy
/// (trailers-only) at the deadline, not at the response timeout; grpcio's
/// own deadline gives the same code.
#[test]
fn grpc_timeouts_are_honoured() {
    let dir = TempDir::new("h2-deadline");
    let world = GrpcServer::start("world");
    dir.write("world", &world.fs_line());
    let proxy = proxy(&dir, "");
    let frame = dir.path().join("frame");
    std::fs::write(&frame, grpc_frame(b"3000")).unwrap();
    let started = Instant::now();
    let head = run(&mut curl_h2(
        proxy.addr,
        "world",
        "/test.Echo/Sleep",
        &[
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            "grpc-timeout: 300m",
            "--data-binary",
            &format!("@{}", frame.display()),
            "-o",
            "/dev/null",
        ],
    ));
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.contains("grpc-status: 4"), "{head}");
    assert!(head.contains("did not answer within 300ms"), "{head}");
    assert!(took < Duration::from_millis(2000), "{took:?}");
    let out = grpc::call(proxy.addr, "world", "deadline", "2000");
    assert_eq!(out["error"]["code"], "DEADLINE_EXCEEDED", "{out}");
}

/// A client that cancels a server-streaming call: the cancellation
/// reaches the backend (its handler sees the call end), and the
/// connection goes on.
#[test]
fn cancellations_reach_the_backend() {
    let dir = TempDir::new("h2-cancel");
    let world = GrpcServer::start("world");
    dir.write("world", &world.fs_line());
    let proxy = proxy(&dir, "");
    let out = grpc::call(proxy.addr, "world", "cancel", "");
    assert_eq!(out["first"].as_array().unwrap().len(), 3);
    assert!(out["cancellations"].as_u64().unwrap() >= 1, "{out}");
}

/// A backend killed in the middle of a server stream: the client gets a
/// clean gRPC error (UNAVAILABLE, not a reset), and the next calls on the
/// same connection go to the backend left.
#[test]
fn a_backend_killed_mid_stream_gives_a_clean_grpc_error() {
    let dir = TempDir::new("h2-die");
    let mut doomed = GrpcServer::start("doomed");
    let survivor = GrpcServer::start("survivor");
    dir.write("doomed", &doomed.fs_line());
    dir.write("world", &(doomed.fs_line() + &survivor.fs_line()));
    let proxy = proxy(&dir, "");
    // The stream goes to the doomed one by name, the calls after by the
    // shared name, whose other backend lives.
    let out = grpc::call(proxy.addr, "doomed", "die", "");
    assert_eq!(out["error"]["code"], "UNAVAILABLE", "{out}");
    assert_eq!(out["got"].as_array().unwrap().len(), 3, "{out}");
    assert!(eventually(5, || !doomed.alive()));
    let out = grpc::call(proxy.addr, "world", "spread", "10");
    assert_eq!(out["counts"], serde_json::json!({"survivor": 10}), "{out}");
}

/// HTTP/2 frame header.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The rapid-reset attack (CVE-2023-44487): a client opens streams and
/// resets each at once. It is cut off with GOAWAY ENHANCE_YOUR_CALM and
/// counted, while another client's calls are served meanwhile.
#[test]
fn a_rapid_reset_client_is_cut_off_while_others_are_served() {
    let dir = TempDir::new("h2-reset");
    let world = GrpcServer::start("world");
    dir.write("world", &world.fs_line());
    let proxy = proxy(&dir, "");
    let mut attacker = TcpStream::connect(proxy.addr).unwrap();
    attacker
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    // :method GET, :scheme http, :path / (static table), :authority world.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 5];
    block.extend_from_slice(b"world");
    let mut streams = 0;
    for id in (1..2000).step_by(2) {
        out.extend(frame(1, 0x5, id, &block));
        out.extend(frame(3, 0, id, &8u32.to_be_bytes()));
        streams += 1;
    }
    // The others meanwhile.
    let calls = std::thread::spawn({
        let addr = proxy.addr;
        move || grpc::call(addr, "world", "spread", "50")
    });
    let _ = attacker.write_all(&out);
    // Frames until GOAWAY.
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let goaway = loop {
        match attacker.read(&mut buf) {
            Ok(0) | Err(_) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let mut at = 0;
        let mut found = None;
        while got.len() >= at + 9 {
            let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
            if got.len() < at + 9 + len {
                break;
            }
            if got[at + 3] == 7 {
                let p = &got[at + 9..at + 9 + len];
                found = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            at += 9 + len;
        }
        if found.is_some() {
            break found;
        }
    };
    assert_eq!(
        goaway,
        Some(0xb),
        "GOAWAY ENHANCE_YOUR_CALM after {streams} resets"
    );
    assert!(eventually(5, || {
        proxy.metric("sidetrack_http2_goaway_calm_total", &[]) >= 1.0
    }));
    let out = calls.join().unwrap();
    assert_eq!(out["counts"]["world"], 50, "{out}");
}

/// What a client that wrote `out` (after the preface) got back: the
/// error code of the GOAWAY it was sent, and whether the proxy then
/// closed the connection (rather than leaving it open until the timeout).
fn goaway_after(addr: SocketAddr, out: &[u8]) -> (Option<u32>, bool) {
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut all = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    all.extend(frame(4, 0, 0, &[]));
    all.extend_from_slice(out);
    // The proxy may close before it read everything.
    let _ = client.write_all(&all);
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let closed = loop {
        match client.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                break !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    };
    let mut at = 0;
    let mut goaway = None;
    while got.len() >= at + 9 {
        let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
        if got.len() < at + 9 + len {
            break;
        }
        if got[at + 3] == 7 {
            let p = &got[at + 9..at + 9 + len];
            goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        at += 9 + len;
    }
    (goaway, closed)
}

/// Floods the proxy answers itself and h2 does not bound: PINGs, SETTINGS
/// and empty DATA frames, each far past its `http2.max_*_per_second`. Each
/// flooding client gets GOAWAY ENHANCE_YOUR_CALM and its connection
/// closed, counted by frame kind, while another client's calls on the
/// same proxy are all served; a client that pings within the limit keeps
/// its connection.
#[test]
fn ping_settings_and_empty_frame_floods_are_cut_off_while_others_are_served() {
    let dir = TempDir::new("h2-flood");
    let world = GrpcServer::start("world");
    dir.write("world", &world.fs_line());
    let proxy = proxy(
        &dir,
        "http2:\n  max_pings_per_second: 50\n  max_settings_per_second: 20\n",
    );
    let calls = std::thread::spawn({
        let addr = proxy.addr;
        move || grpc::call(addr, "world", "spread", "200")
    });
    let pings: Vec<u8> = (0..2000u64)
        .flat_map(|i| frame(6, 0, 0, &i.to_be_bytes()))
        .collect();
    let settings: Vec<u8> = (0..2000).flat_map(|_| frame(4, 0, 0, &[])).collect();
    // A POST on stream 1 (:method POST, :scheme http, :path /,
    // :authority world), then empty DATA frames.
    let mut block = vec![0x83, 0x86, 0x84, 0x01, 5];
    block.extend_from_slice(b"world");
    let mut empty = frame(1, 0x4, 1, &block);
    for _ in 0..2000 {
        empty.extend(frame(0, 0, 1, &[]));
    }
    for (kind, out) in [("ping", pings), ("settings", settings), ("empty", empty)] {
        let (goaway, closed) = goaway_after(proxy.addr, &out);
        assert_eq!(goaway, Some(0xb), "{kind} flood: GOAWAY ENHANCE_YOUR_CALM");
        assert!(closed, "{kind} flood: the connection is closed");
        assert_eq!(
            proxy.metric("sidetrack_http2_floods_total", &[("frame", kind)]),
            1.0,
            "{kind}"
        );
    }
    assert_eq!(proxy.metric("sidetrack_http2_goaway_calm_total", &[]), 3.0);
    // Within the limit: 40 pings at once, then 40 more a second later,
    // answered, and the connection stays.
    let mut polite = TcpStream::connect(proxy.addr).unwrap();
    polite
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let forty: Vec<u8> = (0..40u64)
        .flat_map(|i| frame(6, 0, 0, &i.to_be_bytes()))
        .collect();
    out.extend_from_slice(&forty);
    polite.write_all(&out).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    polite.write_all(&forty).unwrap();
    let mut acks = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    while acks < 80 {
        let n = polite.read(&mut buf).expect("the PING answers");
        assert!(n > 0, "the proxy closed a client within the limit");
        got.extend_from_slice(&buf[..n]);
        acks = 0;
        let mut at = 0;
        while got.len() >= at + 9 {
            let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
            assert_ne!(got[at + 3], 7, "GOAWAY to a client within the limit");
            acks += usize::from(got[at + 3] == 6 && got[at + 4] == 1);
            at += 9 + len;
        }
    }
    let out = calls.join().unwrap();
    assert_eq!(out["counts"]["world"], 200, "{out}");
    assert_eq!(proxy.metric("sidetrack_http2_goaway_calm_total", &[]), 3.0);
}

/// Shadowing HTTP/2: a mirrored gRPC call is copied to the candidate (as
/// gRPC, marked `l5d-shadow: 1`, its message whole) while the client's
/// answer comes from the live version alone; a non-gRPC HTTP/2 request
/// is copied as it went out, as HTTP/1.1 with its body; a dead candidate
/// changes nothing the clients see, and every copy is counted.
#[test]
fn mirrored_http2_requests_are_copied_to_the_candidate_off_the_live_path() {
    let dir = TempDir::new("h2-mirror");
    let live = GrpcServer::start("world-v1");
    let candidate = GrpcServer::start("world-v2");
    let web = Backend::start("web");
    let web2 = Backend::start("web-v2");
    dir.write("world", &live.fs_line());
    dir.write("world-v2", &candidate.fs_line());
    dir.write("web", &web.fs_line());
    dir.write("web-v2", &web2.fs_line());
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    dir.write("gone", &format!("127.0.0.1 {}\n", dead.port()));
    let proxy = proxy(
        &dir,
        "watch_interval_ms: 50\nmirrors:\n\
         \x20 - {name: /svc/world, to: /svc/world-v2, allow_writes: true}\n\
         \x20 - {name: /svc/web, to: /svc/web-v2, allow_writes: true}\n",
    );
    let out = grpc::call(proxy.addr, "world", "unary", "");
    assert_eq!(out["server"], "world-v1", "{out}");
    assert_eq!(out["echo"], "hi");
    let copied = |server: &GrpcServer| {
        grpc::call(server.addr, "world", "seen", "")["seen"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(eventually(5, || copied(&candidate).len() == 1));
    let copy = &copied(&candidate)[0];
    assert_eq!(copy["echo"], "hi", "{copy}");
    assert_eq!(copy["shadow"], "1", "{copy}");
    assert_eq!(copy["dst_service"], "/svc/world", "{copy}");
    // The live version took the call once, unmarked.
    let lived = copied(&live);
    assert_eq!(lived.len(), 1, "{lived:?}");
    assert_eq!(lived[0]["shadow"], "");
    let mirrored = |target: &str, outcome: &str| {
        proxy.metric(
            "sidetrack_mirror_requests_total",
            &[("target", target), ("outcome", outcome)],
        )
    };
    assert!(eventually(5, || mirrored("/svc/world-v2", "answered") == 1.0));

    // A POST that goes out as HTTP/1.1: so does its copy, body and all.
    let head = run(&mut curl_h2(
        proxy.addr,
        "web",
        "/post",
        &["-o", "/dev/null", "--data-binary", "shadowed body"],
    ));
    assert!(head.contains("x-backend: web\r"), "{head}");
    assert!(eventually(5, || web2.requests() == 1));
    let copy = web2.seen().pop().unwrap();
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.target, "/post");
    assert_eq!(copy.body, b"shadowed body");
    assert_eq!(copy.header("l5d-shadow"), Some("1"));
    assert_eq!(copy.header("host"), Some("web"));
    assert_eq!(web.requests(), 1);
    assert!(web.seen()[0].header("l5d-shadow").is_none());
    assert!(eventually(5, || mirrored("/svc/web-v2", "answered") == 1.0));

    // A dead candidate: every call answered by the live version.
    dir.write(
        "config.yaml",
        "watch_interval_ms: 50\nmirrors:\n  - {name: /svc/world, to: /svc/gone, allow_writes: true}\n",
    );
    assert!(eventually(5, || {
        grpc::call(proxy.addr, "world", "unary", "");
        mirrored("/svc/gone", "failed") >= 1.0
    }));
    let before = mirrored("/svc/gone", "failed");
    let to_v2 = copied(&candidate).len();
    let out = grpc::call(proxy.addr, "world", "spread", "30");
    assert_eq!(out["counts"], serde_json::json!({"world-v1": 30}), "{out}");
    assert!(eventually(5, || mirrored("/svc/gone", "failed") == before + 30.0));
    assert_eq!(
        copied(&candidate).len(),
        to_v2,
        "no more copies to world-v2"
    );
}

/// Standard base64, decoded (for the captured bodies).
fn unbase64(text: &str) -> Vec<u8> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().take_while(|&c| c != b'=') {
        let v = ABC.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Capture records HTTP/2 exchanges with their heads and bodies: a gRPC
/// call's messages as base64 (binary, whatever they look like), a text
/// body as text, and a body over `max_body_bytes` by its size alone.
#[test]
fn capture_records_http2_bodies() {
    let dir = TempDir::new("h2-capture");
    let ring = dir.path().join("ring");
    let world = GrpcServer::start("world-v1");
    let web = Backend::start("web");
    dir.write("world", &world.fs_line());
    dir.write("web", &web.fs_line());
    let proxy = proxy(
        &dir,
        &format!(
            "capture:\n  enabled: true\n  dir: {}\n  names: [/svc/world, /svc/web]\n  max_body_bytes: 1024\n",
            ring.display()
        ),
    );
    let out = grpc::call(proxy.addr, "world", "unary", "");
    assert_eq!(out["server"], "world-v1", "{out}");
    let head = run(&mut curl_h2(
        proxy.addr,
        "web",
        "/post",
        &["-o", "/dev/null", "--data-binary", "captured body"],
    ));
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    let head = run(&mut curl_h2(
        proxy.addr,
        "web",
        "/bytes/5000",
        &["-o", "/dev/null"],
    ));
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(eventually(10, || {
        proxy.metric("sidetrack_capture_entries_total", &[]) == 3.0
    }));
    let mut entries: Vec<serde_json::Value> = std::fs::read_dir(&ring)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    entries.sort_by_key(|e| e["request"]["url"].as_str().unwrap().to_owned());
    let [bytes, post, call] = &entries[..] else {
        panic!("{entries:#?}");
    };
    // The gRPC call: its request message and its answer, base64.
    assert_eq!(
        call["request"]["url"], "http://world/test.Echo/Unary",
        "{call}"
    );
    assert_eq!(call["request"]["method"], "POST");
    assert_eq!(call["request"]["httpVersion"], "HTTP/2");
    let sent = &call["request"]["postData"];
    assert_eq!(sent["_encoding"], "base64", "{call}");
    assert_eq!(unbase64(sent["text"].as_str().unwrap()), b"\0\0\0\0\x02hi");
    let content = &call["response"]["content"];
    assert_eq!(content["encoding"], "base64", "{call}");
    assert_eq!(content["mimeType"], "application/grpc");
    let answer = unbase64(content["text"].as_str().unwrap());
    assert_eq!(content["size"], answer.len());
    let message: serde_json::Value = serde_json::from_slice(&answer[5..]).unwrap();
    assert_eq!(message["server"], "world-v1");
    assert_eq!(message["echo"], "hi");
    // A text body both ways.
    assert_eq!(
        post["request"]["postData"]["text"], "captured body",
        "{post}"
    );
    assert!(post["request"]["postData"].get("_encoding").is_none());
    let answer: serde_json::Value =
        serde_json::from_str(post["response"]["content"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(answer["body_len"], 13, "{post}");
    // Over the limit: its size alone.
    assert!(
        bytes["response"]["content"].get("text").is_none(),
        "{bytes}"
    );
    assert_eq!(bytes["response"]["content"]["size"], 5000, "{bytes}");
    assert_eq!(bytes["response"]["bodySize"], 5000, "{bytes}");
}

/// A frame read: its type, flags, stream and payload.
type Frame = (u8, u8, u32, Vec<u8>);

/// Frames read from `conn` until `done` says so or the connection ends
/// (or 5 s pass), PINGs acknowledged as a client must; whether it ended
/// (EOF or reset).
fn frames_until(
    conn: &mut TcpStream,
    mut done: impl FnMut(&[Frame]) -> bool,
) -> (Vec<Frame>, bool) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut got, mut frames) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 16384];
    loop {
        while got.len() >= 9 {
            let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
            if got.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([got[5], got[6], got[7], got[8]]);
            let payload = got[9..9 + len].to_vec();
            if got[3] == 6 && got[4] & 1 == 0 {
                let _ = conn.write_all(&frame(6, 1, 0, &payload));
            }
            frames.push((got[3], got[4], stream, payload));
            got.drain(..9 + len);
        }
        if done(&frames) {
            return (frames, false);
        }
        match conn.read(&mut buf) {
            Ok(0) => return (frames, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                let timed_out = matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
                return (frames, !timed_out);
            }
        }
    }
}

/// An HTTP/2 connection counts as idle only while it serves no stream:
/// at `max_connections` a new client closes the idle one (GOAWAY, then
/// the close), not an older one whose stream is in flight, which gets its
/// answer and no GOAWAY.
#[test]
fn at_the_connection_limit_a_busy_http2_connection_is_not_the_idle_one() {
    let dir = TempDir::new("h2-evict");
    let slow = Backend::start("slow");
    slow.delay_ms
        .store(1500, std::sync::atomic::Ordering::Relaxed);
    let web = Backend::start("web");
    dir.write("slow", &slow.fs_line());
    dir.write("web", &web.fs_line());
    let proxy = proxy(&dir, "limits:\n  max_connections: 2\n");
    let preface = || {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[]));
        out
    };
    // The older connection: a GET / to slow (:method GET, :scheme http,
    // :path /, :authority slow), in flight for 1.5 s.
    let mut busy = TcpStream::connect(proxy.addr).unwrap();
    let mut out = preface();
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 4];
    block.extend_from_slice(b"slow");
    out.extend(frame(1, 0x5, 1, &block));
    busy.write_all(&out).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The newer one, idle.
    let mut idle = TcpStream::connect(proxy.addr).unwrap();
    idle.write_all(&preface()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // It reads, and answers the proxy's PINGs, meanwhile.
    let idle = std::thread::spawn(move || frames_until(&mut idle, |_| false));
    let r = sidetrack_tests::client::get(proxy.addr, "web", "/", &[]);
    assert_eq!(r.status, 200);
    let (frames, closed) = idle.join().unwrap();
    assert!(closed, "the idle connection is closed: {frames:?}");
    assert!(frames.iter().any(|f| f.0 == 7), "with GOAWAY: {frames:?}");
    let answered = |f: &[Frame]| {
        f.iter()
            .any(|(kind, flags, stream, _)| *stream == 1 && *kind <= 1 && flags & 1 != 0)
    };
    let (frames, _) = frames_until(&mut busy, answered);
    assert!(answered(&frames), "the busy stream is answered: {frames:?}");
    assert!(
        !frames.iter().any(|f| f.0 == 7),
        "no GOAWAY to the busy connection: {frames:?}"
    );
    assert_eq!(
        proxy.metric("sidetrack_connections_evicted_total", &[]),
        1.0
    );
}

/// A client that stops reading a large server stream: flow control holds
/// the backend back, and the proxy's memory stays within a few windows
/// (the stream is 25 MiB); once the client reads again every message
/// arrives.
#[test]
fn a_stopped_reader_keeps_the_proxys_memory_bounded() {
    let dir = TempDir::new("h2-slow");
    let world = GrpcServer::start("world");
    dir.write("world", &world.fs_line());
    let proxy = proxy(&dir, "");
    let pid = proxy.child.id();
    let mut client = grpc::call_command(proxy.addr, "world", "slow-reader", "3")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("paused"), "{line}");
    let before = rss_kb(pid);
    std::thread::sleep(Duration::from_millis(2000));
    let during = rss_kb(pid);
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(client.wait().unwrap().success());
    let out: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(out["messages"], 400, "{out}");
    assert!(
        during < before + 8 * 1024,
        "the proxy grew from {before} KiB to {during} KiB while the reader stopped"
    );
}

/// SIGTERM: the proxy sends GOAWAY and lets the call in flight finish,
/// then exits 0.
#[test]
fn sigterm_drains_calls_in_flight() {
    let dir = TempDir::new("h2-drain");
    let world = GrpcServer::start("world");
    dir.write("world", &world.fs_line());
    let mut proxy = proxy(&dir, "shutdown_grace_ms: 5000\n");
    let client = grpc::call_command(proxy.addr, "world", "sleep", "1500")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    proxy.terminate();
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"slept\""), "{text}");
    let status = proxy.child.wait().unwrap();
    assert!(status.success(), "{status}");
}
