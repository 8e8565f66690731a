//! Shadowing: copies of live requests go to a candidate version, marked,
//! in the share asked for, and whatever the candidate does (answer slowly,
//! not at all, or reset) the live exchange is the same. Real sockets on
//! loopback, real backends, the real binary.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use sidetrack_tests::{
    Fnv64, TempDir,
    backend::{Backend, SeenRequest},
    client::{self, Client},
    eventually, pattern,
    proxy::Proxy,
};

const DTAB: &str = "/srv => /#/io.l5d.fs; /svc => /srv";

/// A live version (world-v1), a candidate (world-v2) and another service
/// (hello) behind the file namer, under `config`.
struct Bed {
    dir: TempDir,
    live: Backend,
    candidate: Backend,
    _hello: Backend,
    proxy: Proxy,
}

fn bed(config: &str) -> Bed {
    let dir = TempDir::new("shadow");
    let live = Backend::start("world-v1");
    let candidate = Backend::start("world-v2");
    let hello = Backend::start("hello");
    dir.write("world", &live.fs_line());
    dir.write("world-v2", &candidate.fs_line());
    dir.write("hello", &hello.fs_line());
    let proxy = Proxy::with_dtab(&dir, DTAB, &format!("watch_interval_ms: 50\n{config}"), &[]);
    Bed {
        dir,
        live,
        candidate,
        _hello: hello,
        proxy,
    }
}

impl Bed {
    fn mirror(&self, outcome: &str) -> f64 {
        self.mirror_of("/svc/world", "/srv/world-v2", outcome)
    }

    fn mirror_of(&self, service: &str, target: &str, outcome: &str) -> f64 {
        self.proxy.metric(
            "sidetrack_mirror_requests_total",
            &[
                ("service", service),
                ("target", target),
                ("outcome", outcome),
            ],
        )
    }

    /// Waits until the candidate has had `n` requests and no more come.
    fn candidate_settles_at(&self, n: u64) -> bool {
        eventually(10, || self.candidate.requests() >= n) && {
            thread::sleep(Duration::from_millis(200));
            self.candidate.requests() == n
        }
    }
}

/// A request the candidate saw, last first, that matches `f`.
fn last_seen(b: &Backend, f: impl Fn(&SeenRequest) -> bool) -> Option<SeenRequest> {
    b.seen().into_iter().rev().find(|r| f(r))
}

/// 10,000 requests with a 25% mirror: the share of copies within a
/// binomial band, every copy marked and answered, every live answer from
/// the live version, and the counters agree.
#[test]
fn a_share_of_requests_is_copied_marked_and_counted() {
    let b = bed("mirrors:\n  - {name: /svc/world, to: /srv/world-v2, percent: 25}\n");
    let mut c = Client::connect(b.proxy.addr);
    const N: u64 = 10_000;
    for i in 0..N {
        let r = c.get("world", &format!("/item/{i}"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some("world-v1"), "request {i}");
    }
    assert!(eventually(10, || b.mirror("answered") as u64 == b.candidate.requests()));
    let copies = b.candidate.requests();
    // Binomial(10,000, 0.25): mean 2,500, standard deviation 43.3; five
    // deviations either way fail a correct proxy once in 1.7 million runs.
    assert!(
        (2283..=2717).contains(&copies),
        "{copies} copies of {N} requests at 25%"
    );
    assert!(b.candidate_settles_at(copies));
    assert_eq!(b.live.requests(), N);
    for seen in b.candidate.seen() {
        assert_eq!(seen.header("l5d-shadow"), Some("1"), "{seen:?}");
        assert_eq!(seen.header("host"), Some("world"));
        assert_eq!(seen.header("l5d-dst-service"), Some("/svc/world"));
        assert!(seen.target.starts_with("/item/"));
    }
    assert_eq!(b.mirror("dropped"), 0.0);
    assert_eq!(b.mirror("failed"), 0.0);
    // Another service is not copied.
    let before = b.candidate.requests();
    for _ in 0..50 {
        assert_eq!(c.get("hello", "/", &[]).status, 200);
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(b.candidate.requests(), before);
    // A request that is itself a copy is not copied again.
    for _ in 0..50 {
        c.get("world", "/", &["l5d-shadow: 1"]);
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(b.candidate.requests(), before);
}

/// Sticky by a header: a customer's requests are all copied or none, and
/// the mirror follows config reloads (on, off).
#[test]
fn a_sticky_share_copies_whole_customers_and_reloads() {
    let b = bed(
        "mirrors:\n  - {name: /svc/world, to: /srv/world-v2, percent: 50, sticky_header: x-customer}\n",
    );
    let mut c = Client::connect(b.proxy.addr);
    let mut copied_customers = 0;
    for customer in 0..40 {
        let before = b.candidate.requests();
        for _ in 0..5 {
            c.get("world", "/", &[&format!("x-customer: c{customer}")]);
        }
        // Each copy leaves after its live answer: wait for the last.
        eventually(1, || b.candidate.requests() - before == 5);
        let copies = b.candidate.requests() - before;
        assert!(
            copies == 0 || copies == 5,
            "customer {customer}: {copies} of 5 copied"
        );
        copied_customers += usize::from(copies == 5);
    }
    // Binomial(40, 0.5): 20 ± 3.2; six deviations either way.
    assert!(
        (1..=39).contains(&copied_customers),
        "{copied_customers} of 40"
    );
    // Mirrors off: nothing more is copied.
    b.dir
        .write("config.yaml", "watch_interval_ms: 50\nmirrors: []\n");
    assert!(eventually(5, || {
        let before = b.candidate.requests();
        for i in 0..20 {
            c.get("world", "/", &[&format!("x-customer: c{i}")]);
        }
        thread::sleep(Duration::from_millis(100));
        b.candidate.requests() == before
    }));
}

/// A server that accepts connections and resets them at once.
struct Resetter {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Resetter {
    fn start() -> Resetter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let s = socket2::Socket::from(s);
                        let _ = s.set_linger(Some(Duration::ZERO));
                        drop(s);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Resetter { addr, stop }
    }
}

impl Drop for Resetter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// p99 of `samples`.
fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() * 99 / 100]
}

/// Interleaves requests to the mirrored `world` and the unmirrored
/// `hello` (the same backend code, the same proxy, the same moment) and
/// returns their p99s; every live answer must be right.
fn live_p99s(proxy: &Proxy, n: usize) -> (Duration, Duration) {
    let mut c = Client::connect(proxy.addr);
    let (mut mirrored, mut plain) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        for (host, out, backend) in [
            ("world", &mut mirrored, "world-v1"),
            ("hello", &mut plain, "hello"),
        ] {
            let t = Instant::now();
            let r = c.get(host, &format!("/q/{i}"), &[]);
            out.push(t.elapsed());
            assert_eq!(r.status, 200, "{host} {i}: {}", r.text());
            assert_eq!(r.header("x-backend"), Some(backend));
            let body = r.json();
            assert_eq!(body["target"], format!("/q/{i}"));
        }
    }
    (p99(&mut mirrored), p99(&mut plain))
}

/// A candidate that answers in 5 s (past the 1 s copy timeout), one that
/// is not there, and one that resets every connection: the live answers
/// are the same and their p99 stays within a bound of the unmirrored
/// service's, measured side by side; the copies time out, fail or are
/// dropped at the lane's bound, and are counted.
///
/// The bound: a copy costs the worker a connect and a write after the
/// live answer has gone, never a wait; on a busy 2-core machine (builds
/// beside the test) the scheduler alone moves p99 by several
/// milliseconds, so the mirrored p99 may be at most twice the plain one
/// plus 250 ms. A proxy that waited for a copy would add the copy
/// timeout (1 s) or the slow candidate's 5 s to every request.
#[test]
fn a_slow_dead_or_resetting_candidate_leaves_the_live_exchange_alone() {
    let resetter = Resetter::start();
    let b = bed(
        "shadow: {max_in_flight: 4, max_queued: 8, timeout_ms: 1000}\n\
         mirrors:\n  - {name: /svc/world, to: /srv/world-v2}\n",
    );
    let bound = |mirrored: Duration, plain: Duration| {
        eprintln!("live p99: {mirrored:?} mirrored, {plain:?} not");
        assert!(
            mirrored <= plain * 2 + Duration::from_millis(250),
            "live p99 {mirrored:?} with the mirror, {plain:?} without"
        );
    };

    // Slow.
    b.candidate.delay_ms.store(5000, Ordering::Relaxed);
    let (mirrored, plain) = live_p99s(&b.proxy, 1000);
    bound(mirrored, plain);
    // Four in flight and eight waiting at most: the rest were dropped.
    assert!(
        b.mirror("dropped") >= 1000.0 - 12.0 - 8.0,
        "{}",
        b.proxy.metrics()
    );
    assert!(eventually(10, || b.mirror("timeout") >= 4.0));
    assert!(b.candidate.connections.load(Ordering::Relaxed) <= 12);
    assert_eq!(b.mirror("answered"), 0.0);

    // Dead: nothing listens where the candidate was.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    b.dir
        .write("world-v2", &format!("{} {}\n", dead.ip(), dead.port()));
    assert!(eventually(5, || {
        let before = b.mirror("failed");
        client::get(b.proxy.addr, "world", "/", &[]);
        eventually(1, || b.mirror("failed") > before)
    }));
    let (mirrored, plain) = live_p99s(&b.proxy, 1000);
    bound(mirrored, plain);

    // Resetting.
    b.dir.write(
        "world-v2",
        &format!("{} {}\n", resetter.addr.ip(), resetter.addr.port()),
    );
    thread::sleep(Duration::from_millis(300));
    let failed = b.mirror("failed");
    let (mirrored, plain) = live_p99s(&b.proxy, 1000);
    bound(mirrored, plain);
    assert!(eventually(5, || b.mirror("failed") >= failed + 500.0));
}

/// POST, PUT, PATCH and DELETE are not copied unless the mirror allows
/// writes; then the copy's body is the request's, byte for byte, with
/// Content-Length or chunked.
#[test]
fn writes_are_copied_only_when_allowed_and_then_byte_exact() {
    let b = bed(
        "mirrors:\n  - {name: /svc/world, to: /srv/world-v2}\n  - {name: /svc/hello, to: /srv/world-v2, allow_writes: true}\n",
    );
    let mut c = Client::connect(b.proxy.addr);
    let body = pattern(3000);
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        c.send(
            format!("{method} /w HTTP/1.1\r\nHost: world\r\nContent-Length: 3000\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        c.send(&body).unwrap();
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["body_fnv"], format!("{:016x}", Fnv64::of(&body)));
    }
    assert!(eventually(5, || b.mirror("write_skipped") == 4.0));
    assert_eq!(b.candidate.requests(), 0);

    // Allowed: Content-Length, sent in two parts so that it streams.
    c.send(b"POST /w HTTP/1.1\r\nHost: hello\r\nContent-Length: 3000\r\n\r\n")
        .unwrap();
    c.send(&body[..1000]).unwrap();
    thread::sleep(Duration::from_millis(30));
    c.send(&body[1000..]).unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("x-backend"), Some("hello"));
    assert!(eventually(5, || b.candidate.requests() == 1));
    let copy = last_seen(&b.candidate, |r| r.method == "POST").unwrap();
    assert_eq!(copy.body, body);
    assert_eq!(copy.header("l5d-shadow"), Some("1"));

    // Chunked, in pieces.
    c.send(b"PUT /w HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut chunked = Vec::new();
    for part in body.chunks(700) {
        write!(chunked, "{:x}\r\n", part.len()).unwrap();
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for piece in chunked.chunks(1024) {
        c.send(piece).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
    let r = c.read_response(false).unwrap();
    assert_eq!(r.json()["body_fnv"], format!("{:016x}", Fnv64::of(&body)));
    assert!(eventually(5, || b.candidate.requests() == 2));
    let copy = last_seen(&b.candidate, |r| r.method == "PUT").unwrap();
    assert_eq!(copy.body, body);
}

/// A body over `max_body_bytes` is not copied (and counted); the live
/// request's body arrives whole and exact, large enough to be spliced.
#[test]
fn a_body_over_the_limit_is_not_copied_and_the_live_body_is_exact() {
    let b = bed("shadow: {max_body_bytes: 4096}\n\
         mirrors:\n  - {name: /svc/world, to: /srv/world-v2, allow_writes: true}\n");
    let mut c = Client::connect(b.proxy.addr);
    for len in [4096usize, 4097, 300_000] {
        let body = pattern(len);
        c.send(
            format!("POST /up HTTP/1.1\r\nHost: world\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        for part in body.chunks(50_000) {
            c.send(part).unwrap();
        }
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["body_len"], len);
        assert_eq!(r.json()["body_fnv"], format!("{:016x}", Fnv64::of(&body)));
    }
    assert!(eventually(5, || b.mirror("body_too_large") == 2.0));
    assert!(b.candidate_settles_at(1));
    assert_eq!(b.candidate.seen()[0].body, pattern(4096));
    // A chunked body that grows past the limit as it streams.
    c.send(b"POST /up HTTP/1.1\r\nHost: world\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let body = pattern(10_000);
    for part in body.chunks(1000) {
        c.send(format!("{:x}\r\n", part.len()).as_bytes()).unwrap();
        c.send(part).unwrap();
        c.send(b"\r\n").unwrap();
    }
    c.send(b"0\r\n\r\n").unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.json()["body_fnv"], format!("{:016x}", Fnv64::of(&body)));
    assert!(eventually(5, || b.mirror("body_too_large") == 3.0));
    assert!(b.candidate_settles_at(1));
}

/// The copy's Host: kept, Istio's `-shadow` suffix (before the port), or
/// a fixed value.
#[test]
fn host_rewrite_modes() {
    let b = bed("mirrors:\n\
         \x20 - {name: /svc/world, to: /srv/world-v2}\n\
         \x20 - {name: /svc/hello, to: /srv/world-v2, host: suffix}\n\
         \x20 - {name: /svc/hello, to: /srv/world-v2, host: {set: candidate.internal}}\n");
    let mut c = Client::connect(b.proxy.addr);
    c.get("world", "/keep", &[]);
    assert!(b.candidate_settles_at(1));
    assert_eq!(b.candidate.seen()[0].header("host"), Some("world"));
    c.get("hello", "/two", &[]);
    assert!(b.candidate_settles_at(3));
    let mut hosts: Vec<String> = b.candidate.seen()[1..]
        .iter()
        .map(|r| r.header("host").unwrap().to_owned())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["candidate.internal", "hello-shadow"]);
}

/// A request may ask for its own copy (`l5d-mirror`), under the override
/// policy: honoured from a trusted source, refused from others, and never
/// to a denied destination. The header is not forwarded.
#[test]
fn a_request_asks_for_its_own_copy_under_the_override_policy() {
    let b = bed("overrides: {denied_destinations: [/$, /srv/secret]}\n");
    let mut c = Client::connect(b.proxy.addr);
    let r = c.get("hello", "/mine", &["l5d-mirror: /srv/world-v2"]);
    assert_eq!(r.header("x-backend"), Some("hello"));
    assert!(r.json()["headers"].get("l5d-mirror").is_none());
    assert!(b.candidate_settles_at(1));
    assert_eq!(b.candidate.seen()[0].target, "/mine");
    assert_eq!(b.mirror_of("(request)", "(request)", "answered"), 1.0);
    let r = c.get("hello", "/", &["l5d-mirror: /srv/secret/x"]);
    client::assert_err(&r, 403, "/srv/secret");
    let r = c.get("hello", "/", &["l5d-mirror: not a path"]);
    client::assert_err(&r, 403, "l5d-mirror");

    // From a source the policy does not trust: refused.
    b.dir.write(
        "config.yaml",
        "watch_interval_ms: 50\noverrides: {mode: trusted, trusted_sources: [198.18.0.0/15]}\n",
    );
    assert!(eventually(5, || {
        let r = client::get(b.proxy.addr, "hello", "/", &["l5d-mirror: /srv/world-v2"]);
        r.status == 403
    }));
    thread::sleep(Duration::from_millis(100));
    let copies = b.candidate.requests();
    let r = client::get(b.proxy.addr, "hello", "/", &["l5d-mirror: /srv/world-v2"]);
    client::assert_err(&r, 403, "trusted_sources");
    assert!(b.candidate_settles_at(copies));
}

/// A JSON service: each answer is `body(target, n)` for its `n`th request.
struct JsonServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl JsonServer {
    fn start(body: fn(&str, u64) -> String) -> JsonServer {
        use std::io::BufReader;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((s, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let count = count.clone();
                thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    let _ = s.set_nodelay(true);
                    let mut out = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    while let Ok(Some(req)) = sidetrack_tests::backend::read_request(&mut r, None) {
                        let n = count.fetch_add(1, Ordering::Relaxed);
                        let text = body(&req.target, n);
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: {n}\r\nContent-Length: {}\r\n\r\n",
                            text.len()
                        );
                        if out.write_all(head.as_bytes()).is_err()
                            || out.write_all(text.as_bytes()).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        JsonServer { addr, stop }
    }

    fn fs_line(&self) -> String {
        format!("{} {}\n", self.addr.ip(), self.addr.port())
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A timestamp that differs at every answer.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The user id of a target `/users/ID`.
fn user_id(target: &str) -> &str {
    target.rsplit('/').next().unwrap_or("")
}

/// Diff mode end to end, Diffy's example: the live version and a second
/// instance of it answer the same user with a different timestamp (noise);
/// the candidate also spells the name differently. After a few hundred
/// requests the report names the field that really differs and cancels the
/// timestamp, on `/diff.json`, in `sidetrack diff` and on the `/diff` page;
/// the counters agree.
#[test]
fn diff_mode_reports_what_differs_and_cancels_the_noise() {
    fn live(target: &str, _: u64) -> String {
        format!(
            r#"{{"user":{{"id":{},"name":"ann"}},"time":{},"tags":["a","b"]}}"#,
            user_id(target),
            now_ns()
        )
    }
    fn candidate(target: &str, _: u64) -> String {
        format!(
            r#"{{"user":{{"id":{},"name":"Ann"}},"time":{},"tags":["a","b"]}}"#,
            user_id(target),
            now_ns()
        )
    }
    let (primary, secondary, cand) = (
        JsonServer::start(live),
        JsonServer::start(live),
        JsonServer::start(candidate),
    );
    let dir = TempDir::new("diff");
    dir.write("users", &primary.fs_line());
    dir.write("users-b", &secondary.fs_line());
    dir.write("users-v2", &cand.fs_line());
    dir.write(
        "config.yaml",
        "mirrors:\n  - {name: /svc/users, to: /srv/users-v2, secondary: /srv/users-b}\n",
    );
    let proxy = Proxy::start(&[
        "--dtab",
        DTAB,
        "--fs-dir",
        dir.str(),
        "--config",
        dir.path().join("config.yaml").to_str().unwrap(),
    ]);
    let mut c = Client::connect(proxy.addr);
    const N: u64 = 300;
    for i in 0..N {
        let r = c.get("users", &format!("/users/{}", 1000 + i % 37), &[]);
        assert_eq!(r.status, 200);
        // The live answer, untouched.
        assert!(r.text().contains(r#""name":"ann""#), "{}", r.text());
    }
    let diffed = || {
        proxy.metric(
            "sidetrack_mirror_requests_total",
            &[("service", "/svc/users"), ("outcome", "diffed")],
        )
    };
    assert!(
        eventually(10, || diffed() == N as f64),
        "{}",
        proxy.metrics()
    );
    assert_eq!(
        proxy.metric(
            "sidetrack_mirror_requests_total",
            &[("service", "/svc/users"), ("outcome", "differing")],
        ),
        N as f64
    );

    let report = client::get(proxy.admin, "admin", "/diff.json", &[]).json();
    let endpoints = report["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{report:#}");
    let ep = &endpoints[0];
    // Numbers in the path collapse into one endpoint.
    assert_eq!(ep["name"], "/svc/users GET /users/{id}", "{ep:#}");
    assert_eq!(ep["requests"], N);
    let field = |path: &str| {
        ep["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("no field {path} in {ep:#}"))
            .clone()
    };
    let name = field("200.body.user.name");
    assert_eq!(name["reported"], true, "{name:#}");
    assert_eq!(
        (name["raw"].as_u64(), name["noise"].as_u64()),
        (Some(N), Some(0))
    );
    let time = field("200.body.time");
    assert_eq!(time["reported"], false, "{time:#}");
    assert_eq!(
        (time["raw"].as_u64(), time["noise"].as_u64()),
        (Some(N), Some(N))
    );
    // Date (the answer's count: it differs when the three fall out of
    // step) is ignored by default; the id and tags never differ.
    for path in ["headers.date", "200.body.user.id", "200.body.tags[]"] {
        assert!(
            ep["fields"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["path"] != path),
            "{path} in {ep:#}"
        );
    }

    // The command line says the same, and exits 1: something differs.
    let out = std::process::Command::new(sidetrack_tests::proxy::binary())
        .args(["diff", "--admin", &proxy.admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("200.body.user.name"), "{text}");
    assert!(!text.contains("200.body.time"), "{text}");

    // The page, in headless Chromium.
    let dom = sidetrack_tests::browser::chromium_dom(&format!("http://{}/diff", proxy.admin));
    assert!(dom.contains("200.body.user.name"), "{dom:.2000}");
    assert!(dom.contains("/svc/users GET /users/{id}"), "{dom:.2000}");
}
