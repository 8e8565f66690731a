//! The access log and trace context, through the real binary: the fields of
//! routed, overridden, rule-routed, refused and failed requests, a full
//! buffer that drops lines while requests go on, and trace headers passed,
//! started and timed. Real sockets on loopback, real backends.

use std::process::{Command, Stdio};

use serde_json::Value;
use sidetrack_tests::{
    TempDir,
    backend::Backend,
    client::{self, Client},
    eventually,
    proxy::{self, Proxy},
};

const DTAB: &str =
    "/srv => /#/io.l5d.fs; /host => /srv; /svc => /host; /host/world => /srv/world-v1";

struct Bed {
    dir: TempDir,
    backends: Vec<Backend>,
    proxy: Proxy,
}

/// hello, world-v1, world-v2 and a name (`dead`) whose backend refuses
/// connections, under `config` (YAML).
fn bed(tag: &str, config: &str) -> Bed {
    let dir = TempDir::new(tag);
    let backends = vec![
        Backend::start("hello"),
        Backend::start("world-v1"),
        Backend::start("world-v2"),
    ];
    for b in &backends {
        dir.write(&b.name, &b.fs_line());
    }
    // Port 1 on loopback: nothing listens, connects are refused.
    dir.write("dead", "127.0.0.1 1\n");
    let proxy = Proxy::with_dtab(&dir, DTAB, &config.replace("DIR", dir.str()), &[]);
    Bed {
        dir,
        backends,
        proxy,
    }
}

/// The log's lines so far, parsed, once there are at least `n`.
fn lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let found = eventually(10, || {
        out = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        out.len() >= n
    });
    assert!(found, "expected {n} lines, have {}: {out:#?}", out.len());
    out
}

/// The line of the request whose path is `path`.
fn line_for<'a>(lines: &'a [Value], path: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["path"] == path)
        .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"))
}

#[test]
fn each_line_says_where_a_request_went_and_why() {
    let b = bed(
        "access-log-fields",
        "access_log: {enabled: true, path: DIR/access.log}\n\
         rules:\n\
         - name: acme-beta\n\
         \x20 match:\n\
         \x20   headers: [{name: x-customer, exact: acme}]\n\
         \x20 dtab: /host/world => /srv/world-v2\n",
    );
    let addr = b.proxy.addr;
    let routed = client::get(addr, "world", "/routed?token=secret", &["l5d-reqid: req-1"]);
    assert_eq!(routed.status, 200);
    let overridden = client::get(
        addr,
        "world",
        "/overridden",
        &["l5d-dtab: /host/world => /srv/world-v2"],
    );
    assert_eq!(overridden.header("x-backend"), Some("world-v2"));
    let ruled = client::get(addr, "world", "/ruled", &["x-customer: acme"]);
    assert_eq!(ruled.header("x-backend"), Some("world-v2"));
    let refused = client::get(
        addr,
        "world",
        "/refused",
        &["l5d-dtab: /host/world => /$/inet/127.0.0.1/9990"],
    );
    assert_eq!(refused.status, 403);
    let failed = client::get(addr, "dead", "/failed", &[]);
    assert_eq!(failed.status, 502);
    let unknown = client::get(addr, "nobody", "/unknown", &[]);
    assert_eq!(unknown.status, 502);

    let path = b.dir.path().join("access.log");
    let all = lines(&path, 6);

    let l = line_for(&all, "/routed");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["authority"], "world");
    assert_eq!(l["status"], 200);
    assert_eq!(l["name"], "/svc/world");
    assert_eq!(l["dst"], "/#/io.l5d.fs/world-v1");
    assert_eq!(l["via"], "base");
    assert_eq!(l["override"], false);
    assert_eq!(l["request_id"], "req-1");
    assert_eq!(l["error"], Value::Null);
    assert!(l["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    // The query is not logged by default.
    assert!(!l.to_string().contains("secret"));
    let body_len = routed.body.len() as u64;
    assert!(l["bytes_out"].as_u64().unwrap() > body_len, "{l}");
    assert!(l["bytes_in"].as_u64().unwrap() > 20, "{l}");
    let total = l["duration_us"].as_u64().unwrap();
    let first_byte = l["first_byte_us"].as_u64().unwrap();
    let connect = l["connect_us"].as_u64().unwrap();
    let route = l["route_us"].as_u64().unwrap();
    let identify = l["identify_us"].as_u64().unwrap();
    assert!(
        identify <= route && route <= connect && connect <= first_byte && first_byte <= total,
        "{l}"
    );
    assert_eq!(l["retried"], false);
    assert_eq!(l["mirrored"], false);

    let l = line_for(&all, "/overridden");
    assert_eq!(l["via"], "override");
    assert_eq!(l["override"], true);
    assert_eq!(l["dst"], "/#/io.l5d.fs/world-v2");
    // The proxy gave it an id, 16 hex digits.
    assert_eq!(l["request_id"].as_str().unwrap().len(), 16);

    let l = line_for(&all, "/ruled");
    assert_eq!(l["via"], "rule");
    assert_eq!(l["rule"], "acme-beta");
    assert_eq!(l["dst"], "/#/io.l5d.fs/world-v2");

    let l = line_for(&all, "/refused");
    assert_eq!(l["status"], 403);
    assert_eq!(l["error"], "override_refused");
    assert_eq!(l["dst"], "");

    let l = line_for(&all, "/failed");
    assert_eq!(l["status"], 502);
    assert_eq!(l["error"], "connect_failed");
    assert_eq!(l["name"], "/svc/dead");
    assert_eq!(l["dst"], "/#/io.l5d.fs/dead");

    let l = line_for(&all, "/unknown");
    assert_eq!(l["status"], 502);
    assert_eq!(l["error"], "bind_neg");

    // A head the proxy cannot parse is logged too, without its fields.
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost world\r\n\r\n").unwrap();
    let bad = c.read_response(false).unwrap();
    assert_eq!(bad.status, 400);
    let all = lines(&path, 7);
    let l = all
        .iter()
        .find(|l| l["status"] == 400)
        .expect("a line for the bad request");
    assert_eq!(l["error"], "bad_request");
    assert_eq!(l["method"], "");
    assert_eq!(
        b.proxy.metric("sidetrack_access_log_dropped_total", &[]),
        0.0
    );
}

#[test]
fn the_common_format_and_logrotate() {
    let b = bed(
        "access-log-common",
        "access_log: {enabled: true, format: common, path: DIR/access.log, include_query: true}\n",
    );
    let addr = b.proxy.addr;
    assert_eq!(client::get(addr, "world", "/one?x=1", &[]).status, 200);
    let path = b.dir.path().join("access.log");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(eventually(10, || read(&path).lines().count() == 1));
    let line = read(&path);
    assert!(
        line.starts_with("127.0.0.1 - - ["),
        "not the common log format: {line}"
    );
    assert!(line.contains("\"GET /one?x=1 HTTP/1.1\" 200 "), "{line}");
    assert!(
        line.contains(" name=/svc/world dst=/#/io.l5d.fs/world-v1 via=base "),
        "{line}"
    );
    // logrotate moves the file and sends SIGHUP: lines go to a new file.
    let rotated = b.dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(b.proxy.child.id() as i32, libc::SIGHUP) };
    // The proxy keeps serving through the signal; the line of the first
    // request after the reopen is in the new file.
    assert!(eventually(10, || {
        assert_eq!(client::get(addr, "world", "/two", &[]).status, 200);
        read(&path).contains("/two")
    }));
    assert_eq!(read(&rotated).lines().count(), 1);
}

#[test]
fn a_full_buffer_drops_lines_and_requests_go_on() {
    let dir = TempDir::new("access-log-full");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    dir.write(
        "config.yaml",
        "access_log: {enabled: true, path: '-', buffer_bytes: 4096}\n",
    );
    let mut cmd = Command::new(proxy::binary());
    cmd.args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--dtab", "/svc => /#/io.l5d.fs", "--fs-dir", dir.str()])
        .args(["--config", &format!("{}/config.yaml", dir.str())]);
    // Standard output is a pipe nobody reads: once its 64 KiB are full the
    // writer blocks, and the buffer behind it fills.
    let p = Proxy::spawn_with_stdout(cmd, Stdio::piped());
    let mut c = Client::connect(p.addr);
    for i in 0..3000 {
        let r = c.get("web", &format!("/request/{i}"), &[]);
        assert_eq!(r.status, 200, "request {i}");
    }
    let dropped = p.metric("sidetrack_access_log_dropped_total", &[]);
    let written = p.metric("sidetrack_access_log_lines_total", &[]);
    assert!(dropped > 0.0, "no line was dropped ({written} written)");
    assert!(written < 3000.0, "{written} lines written to a full pipe");
    assert_eq!(web.requests(), 3000);
}

#[test]
fn trace_context_is_passed_started_and_timed() {
    let b = bed(
        "access-log-trace",
        "access_log: {enabled: true, path: DIR/access.log}\ntrace: {start: true}\n",
    );
    let addr = b.proxy.addr;
    let world = &b.backends[1];
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = client::get(
        addr,
        "world",
        "/theirs",
        &[
            &format!("traceparent: {theirs}"),
            "tracestate: vendor=opaque,other=1",
        ],
    );
    assert_eq!(r.status, 200);
    let r = client::get(addr, "world", "/started", &["l5d-timing: please"]);
    assert_eq!(r.status, 200);
    let seen = world.seen();
    let passed = seen.iter().find(|s| s.target == "/theirs").unwrap();
    assert_eq!(passed.header("traceparent"), Some(theirs));
    assert_eq!(passed.header("tracestate"), Some("vendor=opaque,other=1"));
    assert_eq!(passed.header("l5d-timing"), None);
    let started = seen.iter().find(|s| s.target == "/started").unwrap();
    let tp = started
        .header("traceparent")
        .expect("a started traceparent");
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
    // The proxy's own timing, in the Server-Timing syntax, replacing the
    // client's value.
    let timing = started.header("l5d-timing").expect("l5d-timing");
    let names: Vec<&str> = timing
        .split(", ")
        .map(|part| {
            let (name, dur) = part.split_once(";dur=").expect(timing);
            dur.parse::<f64>().expect(timing);
            name
        })
        .collect();
    assert_eq!(names, ["identify", "route", "connect"], "{timing}");
    assert_eq!(
        started
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("l5d-timing"))
            .count(),
        1
    );

    let all = lines(&b.dir.path().join("access.log"), 2);
    assert_eq!(line_for(&all, "/theirs")["traceparent"], theirs);
    assert_eq!(line_for(&all, "/started")["traceparent"], tp);
}
