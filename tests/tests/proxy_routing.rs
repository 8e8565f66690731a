//! The explicit proxy routes by dtab: base dtab, per-request `l5d-dtab`,
//! `l5d-ctx-dtab` across hops, namer fallback, weighted splits, hot reload.
//! Real sockets on loopback; real backends; the real binary.

use sidetrack_tests::{
    TempDir,
    backend::Backend,
    client, eventually,
    proxy::{Proxy, metric_value},
};

/// The tutorial's dtab: /svc/<host> goes to /host/<host>, which the file
/// namer serves from /srv/<name>.
const DTAB: &str = "/srv => /#/io.l5d.fs; /host => /srv; /svc => /host";

fn staging() -> (TempDir, Backend, Backend, Backend, Proxy) {
    staging_with("")
}

/// [`staging`] with these settings (YAML).
fn staging_with(config: &str) -> (TempDir, Backend, Backend, Backend, Proxy) {
    let dir = TempDir::new("routing");
    let (hello, v1, v2) = (
        Backend::start("hello"),
        Backend::start("world-v1"),
        Backend::start("world-v2"),
    );
    dir.write("hello", &hello.fs_line());
    dir.write("world-v1", &v1.fs_line());
    dir.write("world-v2", &v2.fs_line());
    dir.write("config.yaml", config);
    let config = dir.path().join("config.yaml");
    let proxy = Proxy::start(&[
        "--dtab",
        &format!("{DTAB}; /host/world => /srv/world-v1"),
        "--fs-dir",
        dir.str(),
        "--config",
        config.to_str().unwrap(),
    ]);
    (dir, hello, v1, v2, proxy)
}

#[test]
fn routes_by_the_base_dtab_and_by_a_request_override() {
    let (_dir, _hello, _v1, _v2, proxy) = staging();
    let plain = client::get(proxy.addr, "world", "/", &[]);
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("x-backend"), Some("world-v1"));
    let seen = plain.json();
    assert_eq!(seen["headers"]["l5d-dst-service"], "/svc/world");
    assert_eq!(seen["headers"]["l5d-dst-client"], "/#/io.l5d.fs/world-v1");
    assert!(
        seen["headers"]["l5d-reqid"]
            .as_str()
            .is_some_and(|id| id.len() == 16)
    );
    assert!(
        seen["headers"].get("l5d-ctx-dtab").is_none(),
        "no local dtab, no ctx header"
    );
    assert!(
        seen["headers"]["via"]
            .as_str()
            .unwrap()
            .contains("sidetrack")
    );

    let staged = client::get(
        proxy.addr,
        "world",
        "/",
        &["l5d-dtab: /host/world => /srv/world-v2"],
    );
    assert_eq!(staged.header("x-backend"), Some("world-v2"));
    let seen = staged.json();
    assert!(
        seen["headers"].get("l5d-dtab").is_none(),
        "l5d-dtab is removed"
    );
    assert_eq!(
        seen["headers"]["l5d-ctx-dtab"],
        "/host/world=>/srv/world-v2"
    );

    // dtab-local is not ours to read or drop.
    let local = client::get(
        proxy.addr,
        "world",
        "/",
        &["dtab-local: /host/world => /srv/world-v2"],
    );
    assert_eq!(local.header("x-backend"), Some("world-v1"));
    assert_eq!(
        local.json()["headers"]["dtab-local"],
        "/host/world => /srv/world-v2"
    );

    // Only that request: the next plain one goes to v1 again.
    assert_eq!(
        client::get(proxy.addr, "world", "/", &[]).header("x-backend"),
        Some("world-v1")
    );
    // Other services are untouched by a world override.
    let hello = client::get(
        proxy.addr,
        "hello",
        "/",
        &["l5d-dtab: /host/world => /srv/world-v2"],
    );
    assert_eq!(hello.header("x-backend"), Some("hello"));
}

#[test]
fn every_dtab_header_instance_counts_and_ctx_comes_first() {
    let (_dir, _hello, _v1, _v2, proxy) = staging();
    // l5d-dtab is read after l5d-ctx-dtab, so its entry wins.
    let r = client::get(
        proxy.addr,
        "world",
        "/",
        &[
            "l5d-dtab: /host/world => /srv/world-v2",
            "l5d-ctx-dtab: /host/world => /srv/world-v1",
            "l5d-dtab: /host/other => /srv/hello",
        ],
    );
    assert_eq!(r.header("x-backend"), Some("world-v2"));
    assert_eq!(
        r.json()["headers"]["l5d-ctx-dtab"],
        "/host/world=>/srv/world-v1;/host/world=>/srv/world-v2;/host/other=>/srv/hello"
    );
}

#[test]
fn the_context_dtab_crosses_two_proxy_hops() {
    let (dir, _hello, _v1, _v2, second) = staging();
    // Hop 1 sends world to hop 2 (the second proxy); hop 2's base sends it to v1.
    dir.write(
        "hop2",
        &format!("{} {}\n", second.addr.ip(), second.addr.port()),
    );
    let first = Proxy::start(&[
        "--dtab",
        &format!("{DTAB}; /host/world => /srv/hop2"),
        "--fs-dir",
        dir.str(),
    ]);

    let plain = client::get(first.addr, "world", "/", &[]);
    assert_eq!(plain.header("x-backend"), Some("world-v1"));
    let via = plain.json()["headers"]["via"].as_str().unwrap().to_owned();
    assert_eq!(via.matches("sidetrack").count(), 2, "two hops: {via}");

    // The override names a destination only hop 2 reaches: it must travel
    // there as l5d-ctx-dtab and apply there.
    let staged = client::get(
        first.addr,
        "world",
        "/",
        &["l5d-dtab: /srv/world-v1 => /srv/world-v2"],
    );
    assert_eq!(
        staged.header("x-backend"),
        Some("world-v2"),
        "hop 2 applied the forwarded context"
    );
    let seen = staged.json();
    assert_eq!(
        seen["headers"]["l5d-ctx-dtab"],
        "/srv/world-v1=>/srv/world-v2"
    );
    assert!(seen["headers"].get("l5d-dtab").is_none());
}

#[test]
fn a_neg_namer_falls_back_to_an_earlier_dentry() {
    let dir = TempDir::new("fallback");
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    dir.write("web", &stable.fs_line());
    // /srv/web-canary has no file yet: neg, so the earlier /srv/web dentry takes over.
    let proxy = Proxy::start(&[
        "--dtab",
        "/svc/web => /srv/web; /svc/web => /srv/web-canary; /srv => /#/io.l5d.fs",
        "--fs-dir",
        dir.str(),
    ]);
    assert_eq!(
        client::get(proxy.addr, "web", "/", &[]).header("x-backend"),
        Some("stable")
    );
    dir.write("web-canary", &canary.fs_line());
    assert!(eventually(10, || client::get(proxy.addr, "web", "/", &[])
        .header("x-backend")
        == Some("canary")));
    std::fs::remove_file(dir.path().join("web-canary")).unwrap();
    assert!(eventually(10, || client::get(proxy.addr, "web", "/", &[])
        .header("x-backend")
        == Some("stable")));
}

#[test]
fn weighted_unions_split_requests_in_proportion() {
    let dir = TempDir::new("weights");
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    dir.write("a", &a.fs_line());
    dir.write("b", &b.fs_line());
    let proxy = Proxy::start(&[
        "--dtab",
        "/svc/web => 0.8 * /#/io.l5d.fs/a & 0.2 * /#/io.l5d.fs/b",
        "--fs-dir",
        dir.str(),
    ]);
    let mut c = client::Client::connect(proxy.addr);
    const N: usize = 1000;
    let to_a = (0..N)
        .filter(|_| c.get("web", "/", &[]).header("x-backend") == Some("a"))
        .count();
    // 800 expected; with p = 0.8 the standard deviation is about 12.6, so
    // ±63 is five of them.
    assert!((737..=863).contains(&to_a), "{to_a} of {N} went to a");
    assert_eq!(
        proxy.metric("sidetrack_requests_total", &[("dst", "/#/io.l5d.fs/a")]) as usize,
        to_a,
        "metrics count the same split"
    );
}

#[test]
fn a_changed_dtab_file_applies_without_restart_and_a_broken_one_is_refused() {
    let dir = TempDir::new("reload");
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    dir.write("v1", &v1.fs_line());
    dir.write("v2", &v2.fs_line());
    let dtab = dir.path().join("base.dtab");
    std::fs::write(&dtab, "/svc/web => /#/io.l5d.fs/v1\n").unwrap();
    let proxy = Proxy::start(&["--dtab-file", dtab.to_str().unwrap(), "--fs-dir", dir.str()]);
    assert_eq!(
        client::get(proxy.addr, "web", "/", &[]).header("x-backend"),
        Some("v1")
    );

    dir.write("base.dtab", "/svc/web => /#/io.l5d.fs/v2\n");
    assert!(eventually(10, || client::get(proxy.addr, "web", "/", &[])
        .header("x-backend")
        == Some("v2")));

    dir.write("base.dtab", "/svc/web => /#/io.l5d.fs/v1 |\n");
    assert!(eventually(10, || proxy
        .logs
        .try_iter()
        .any(|l| l.contains("reload refused"))));
    assert_eq!(
        client::get(proxy.addr, "web", "/", &[]).header("x-backend"),
        Some("v2"),
        "the old dtab stays"
    );
    let admin_dtab = client::get(proxy.admin, "admin", "/dtab", &[]).text();
    assert_eq!(admin_dtab.trim(), "/svc/web=>/#/io.l5d.fs/v2");
}

#[test]
fn after_a_namer_file_changes_routes_are_cached_again_and_connections_pooled() {
    let dir = TempDir::new("namer-change");
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    dir.write("web", &a.fs_line());
    let proxy = Proxy::with_fs_namer(&dir, "watch_interval_ms: 50\n", &[]);
    let mut c = client::Client::connect(proxy.addr);
    assert_eq!(c.get("web", "/", &[]).header("x-backend"), Some("a"));
    // The file now names b: the cached route is stale, and bound again.
    dir.write("web", &b.fs_line());
    assert!(eventually(5, || {
        c.get("web", "/", &[]).header("x-backend") == Some("b")
    }));
    let before = b.connections.load(std::sync::atomic::Ordering::Relaxed);
    let misses = proxy.metric("sidetrack_dtab_cache_misses_total", &[]);
    let hits = proxy.metric("sidetrack_dtab_cache_hits_total", &[]);
    for i in 0..20 {
        assert_eq!(
            c.get("web", &format!("/{i}"), &[]).header("x-backend"),
            Some("b")
        );
    }
    // The new route went into the cache, so the 20 requests share one
    // balancer and so one pooled connection to b.
    assert_eq!(
        b.connections.load(std::sync::atomic::Ordering::Relaxed),
        before,
        "a new backend connection per request"
    );
    // Counted so, too: 20 hits, no miss.
    assert_eq!(
        proxy.metric("sidetrack_dtab_cache_hits_total", &[]) - hits,
        20.0
    );
    assert_eq!(
        proxy.metric("sidetrack_dtab_cache_misses_total", &[]),
        misses
    );
    // And a stale route counts as a miss: change the file once more.
    dir.write("web", &format!("{}# moved\n", b.fs_line()));
    assert!(eventually(5, || {
        let before = proxy.metric("sidetrack_dtab_cache_misses_total", &[]);
        c.get("web", "/", &[]);
        proxy.metric("sidetrack_dtab_cache_misses_total", &[]) > before
    }));
}

/// `Proxy-Authorization` is for the proxy, which takes none: it is not
/// passed on (RFC 9110 §11.7.2); `Authorization`, the backend's, is.
#[test]
fn proxy_credentials_stop_at_the_proxy() {
    let (_dir, _hello, _v1, _v2, proxy) = staging();
    let r = client::get(
        proxy.addr,
        "world",
        "/",
        &[
            "Proxy-Authorization: Basic cHJveHk6c2VjcmV0",
            "Authorization: Bearer for-the-backend",
        ],
    );
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert!(
        seen["headers"].get("proxy-authorization").is_none(),
        "{seen}"
    );
    assert_eq!(seen["headers"]["authorization"], "Bearer for-the-backend");
}

/// Responses name the proxy in Via, as requests do (RFC 9110 §7.6.3).
#[test]
fn responses_carry_the_proxy_s_via() {
    let (_dir, _hello, _v1, _v2, proxy) = staging();
    let r = client::get(proxy.addr, "world", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("via"), Some("1.1 sidetrack"), "{:?}", r.headers);
    let seen = r.json();
    assert_eq!(seen["headers"]["via"], "1.1 sidetrack");
}

/// Overrides that send requests to distinct literal addresses are counted
/// under one pair of labels (they cannot fill the series cap), and the
/// warnings their failed connects cause are rate-limited, the rest
/// counted.
#[test]
fn overrides_to_literal_addresses_share_one_label_and_their_warnings_are_bounded() {
    // Literal addresses are denied to overrides by default; allowed here.
    let (_dir, _hello, _v1, _v2, proxy) = staging_with("overrides:\n  denied_destinations: []\n");
    // Ports nothing listens on: bound, then let go.
    let ports: Vec<u16> = (0..200)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    for port in &ports {
        let header = format!("l5d-dtab: /host/world => /$/inet/127.0.0.1/{port}");
        assert_eq!(
            client::get(proxy.addr, "world", "/", &[&header]).status,
            502
        );
    }
    let m = proxy.metrics();
    assert!(
        !m.contains(&format!("127.0.0.1/{}", ports[0])),
        "an override's address became a label"
    );
    let folded = [
        ("service", "(override)"),
        ("dst", "/$ (override)"),
        ("override", "true"),
    ];
    assert_eq!(metric_value(&m, "sidetrack_requests_total", &folded), 200.0);
    // The base dtab's destinations keep their own labels.
    assert_eq!(client::get(proxy.addr, "world", "/", &[]).status, 200);
    let m = proxy.metrics();
    let real = [
        ("service", "/svc/world"),
        ("dst", "/#/io.l5d.fs/world-v1"),
        ("override", "false"),
    ];
    assert_eq!(metric_value(&m, "sidetrack_requests_total", &real), 1.0);
    assert!(
        metric_value(&m, "sidetrack_log_lines_suppressed_total", &[]) >= 100.0,
        "200 failed connects wrote a warning each"
    );
}
