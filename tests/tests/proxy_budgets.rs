//! What one client can make the proxy hold or spend is bounded: the route
//! cache by bytes, a request's dtab by entries. Real sockets on loopback,
//! real backends, the real binary.

use sidetrack_tests::{
    TempDir,
    backend::Backend,
    client::{self, Client},
    proxy::{Proxy, rss_kb},
};

fn bed(config: &str) -> (TempDir, Backend, Proxy) {
    Proxy::with_web_backend("budgets", config)
}

/// A dtab of `entries` entries, distinct for each `seed`, about `entry_len`
/// bytes an entry; none matches `/svc/web`.
fn dtab(seed: usize, entries: usize, entry_len: usize) -> String {
    let pad = "p".repeat(entry_len.saturating_sub(24));
    (0..entries)
        .map(|j| format!("/u{seed}x{j}/{pad}=>/y"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Before the cache was bounded by bytes it held 10,000 routes whatever
/// they weighed: a client sending a distinct 3 KB dtab with every request
/// grew the proxy by about 7 KB a request (key, local dtab, route), for
/// good. Now what the cached routes hold stays under
/// `route_cache_max_bytes`, and so does the growth.
#[test]
fn distinct_dtabs_keep_the_route_cache_within_its_bytes() {
    let (_dir, _web, proxy) = bed("route_cache_max_bytes: 2097152\n");
    let pid = proxy.child.id();
    let mut c = Client::connect(proxy.addr);
    let mut send = |from: usize, to: usize| {
        for i in from..to {
            let header = format!("l5d-dtab: {}", dtab(i, 55, 60));
            let r = c.get("web", "/", &[&header]);
            assert_eq!(r.status, 200, "request {i}: {:?}", r.headers);
        }
    };
    // Warm-up: buffers and the allocator's arenas grow to their size.
    send(0, 400);
    let before = rss_kb(pid);
    send(400, 4_000);
    let after = rss_kb(pid);
    let bytes = proxy.metric("sidetrack_dtab_cache_bytes", &[]);
    let routes = proxy.metric("sidetrack_dtab_cache_routes", &[]);
    assert!(
        bytes > 1_000_000.0 && bytes <= 2_097_152.0,
        "cache bytes {bytes}"
    );
    assert!(routes < 1_000.0, "{routes} routes cached");
    assert!(proxy.metric("sidetrack_dtab_cache_evictions_total", &[]) > 3_000.0);
    // 3,600 routes of ~7 KB each were 25 MB.
    let grown = after.saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "RSS grew {grown} KiB over 3,600 distinct dtabs"
    );
}

/// A route whose key (dtab headers and name) is longer than
/// `route_cache_max_key_bytes` is bound every time and never cached.
#[test]
fn a_route_with_a_long_key_is_not_cached() {
    let (_dir, _web, proxy) = bed("");
    let header = format!("l5d-dtab: {}", dtab(1, 70, 80));
    assert!(header.len() > 4096);
    let misses = proxy.metric("sidetrack_dtab_cache_misses_total", &[]);
    let mut c = Client::connect(proxy.addr);
    for _ in 0..3 {
        assert_eq!(c.get("web", "/", &[&header]).status, 200);
    }
    assert_eq!(
        proxy.metric("sidetrack_dtab_cache_misses_total", &[]),
        misses + 3.0
    );
    assert_eq!(proxy.metric("sidetrack_dtab_cache_routes", &[]), 0.0);
    // A short one is cached: one miss, then hits.
    for _ in 0..3 {
        assert_eq!(c.get("web", "/", &["l5d-dtab: /a=>/b"]).status, 200);
    }
    assert_eq!(
        proxy.metric("sidetrack_dtab_cache_misses_total", &[]),
        misses + 4.0
    );
    assert_eq!(proxy.metric("sidetrack_dtab_cache_routes", &[]), 1.0);
}

/// Binding costs time in the number of local entries, and each new dtab is
/// bound afresh: past `limits.max_dtab_entries` (l5d-ctx-dtab and l5d-dtab
/// together) a request gets 400 with `l5d-err`, before any parsing, and the
/// proxy goes on serving.
#[test]
fn a_request_with_too_many_dtab_entries_gets_400() {
    let (_dir, _web, proxy) = bed("limits:\n  max_dtab_entries: 40\n");
    let at_limit = format!("l5d-dtab: {}", dtab(1, 40, 30));
    let mut c = Client::connect(proxy.addr);
    assert_eq!(c.get("web", "/", &[&at_limit]).status, 200);

    let over = format!("l5d-dtab: {}", dtab(2, 41, 30));
    let r = Client::connect(proxy.addr).get("web", "/", &[&over]);
    assert_eq!(r.status, 400, "{:?}", r.headers);
    let err = r.header("l5d-err").expect("l5d-err");
    assert!(
        err.contains("41 dtab entries") && err.contains("max_dtab_entries"),
        "{err}"
    );
    // Split across the two headers, they count together.
    let ctx = format!("l5d-ctx-dtab: {}", dtab(3, 30, 30));
    let req = format!("l5d-dtab: {}", dtab(4, 11, 30));
    let r = Client::connect(proxy.addr).get("web", "/", &[&ctx, &req]);
    assert_eq!(r.status, 400);
    // 4,000 entries (63 KB, the probe's) are refused too, without binding.
    let huge = format!("l5d-dtab: {}", dtab(5, 4_000, 15));
    let r = Client::connect(proxy.addr).get("web", "/", &[&huge]);
    assert_eq!(r.status, 400);
    assert_eq!(
        proxy.metric("sidetrack_errors_total", &[("kind", "bad_dtab")]),
        3.0
    );
    // The first connection still works.
    assert_eq!(c.get("web", "/", &[]).status, 200);
}

/// At `max_connections`, a new client closes the connection idle longest
/// instead of waiting in the listen backlog until one idles out (60 s);
/// the others keep their connections.
#[test]
fn at_the_connection_limit_the_oldest_idle_connection_makes_room() {
    let (_dir, _web, proxy) = bed("limits:\n  max_connections: 4\n");
    let mut held: Vec<Client> = (0..4)
        .map(|_| {
            let mut c = Client::connect(proxy.addr);
            assert_eq!(c.get("web", "/", &[]).status, 200);
            // Distinct idle start times on the proxy's 50 ms clock.
            std::thread::sleep(std::time::Duration::from_millis(120));
            c
        })
        .collect();
    let mut newcomer = Client::connect(proxy.addr);
    newcomer
        .stream()
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(newcomer.get("web", "/", &[]).status, 200);
    // The first, idle longest, was closed; the rest still serve.
    let mut oldest = held.remove(0);
    assert!(oldest.read_to_end().unwrap().is_empty());
    for c in &mut held {
        assert_eq!(c.get("web", "/", &[]).status, 200);
    }
    assert_eq!(
        proxy.metric("sidetrack_connections_evicted_total", &[]),
        1.0
    );
}

/// At `max_connections` with every connection busy (here: each in the
/// middle of a request head), a new client is answered 503 at once, with
/// `l5d-err`, rather than left in the backlog; the busy ones finish.
#[test]
fn at_the_connection_limit_with_none_idle_a_new_connection_is_refused_at_once() {
    let (_dir, _web, proxy) = bed("limits:\n  max_connections: 2\n");
    let mut busy: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::connect(proxy.addr);
            c.send(b"GET / HTTP/1.1\r\nHost: we").unwrap();
            c
        })
        .collect();
    // The proxy has read both partial heads.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut refused = Client::connect(proxy.addr);
    refused
        .stream()
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let _ = refused.send(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n");
    let r = refused.read_response(false).expect("an answer, not a wait");
    client::assert_err(&r, 503, "max_connections");
    assert_eq!(
        proxy.metric("sidetrack_errors_total", &[("kind", "overloaded")]),
        1.0
    );
    for c in &mut busy {
        c.send(b"b\r\n\r\n").unwrap();
        assert_eq!(c.read_response(false).unwrap().status, 200);
    }
}

/// The whole proxy's memory budget holds against clients that each make
/// a buffer grow (here: request heads of 40 KB that never end, each
/// growing its connection's read buffer from 8 to 64 KB). At the budget, a
/// head that needs more room is refused with 503; near it, new connections
/// are refused with 503; a lean client's requests, which fit in the
/// buffers it has, are served throughout; and when the hostile clients go,
/// so does the pressure.
#[test]
fn the_memory_budget_sheds_growing_requests_and_new_connections() {
    let budget = 3 << 20;
    let (_dir, _web, proxy) = bed(&format!(
        "route_cache_max_bytes: 1048576\nlimits:\n  memory_budget_bytes: {budget}\n  \
         head_timeout_ms: 60000\n"
    ));
    let pid = proxy.child.id();
    let mut lean = Client::connect(proxy.addr);
    assert_eq!(lean.get("web", "/", &[]).status, 200);
    let before = rss_kb(pid);
    let answer = |c: &mut Client| {
        c.stream()
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        c.read_response(false).ok()
    };

    // 80 connections that start a head: about 20 KB each, under 90%.
    let mut started: Vec<Client> = (0..80)
        .map(|_| {
            let mut c = Client::connect(proxy.addr);
            c.send(b"GET / HTTP/1.1\r\nHost: web\r\n").unwrap();
            c
        })
        .collect();
    assert!(sidetrack_tests::eventually(5, || proxy
        .metric("sidetrack_connections_active", &[])
        == 81.0));
    assert_eq!(proxy.metric("sidetrack_overload_state", &[]), 0.0);
    // Each now sends 40 KB more of its head: the first few grow, then the
    // budget is spent and the rest are refused.
    let pad = format!("x-pad: {}\r\n", "p".repeat(40_000));
    let mut shed = 0;
    for c in &mut started {
        let _ = c.send(pad.as_bytes());
        if let Some(r) = answer(c) {
            assert_eq!(r.status, 503);
            let err = r.header("l5d-err").unwrap_or_default();
            assert!(err.contains("needs more room"), "{err}");
            shed += 1;
        }
    }
    assert!((30..80).contains(&shed), "{shed} of 80 heads refused");
    assert!(proxy.metric("sidetrack_overload_shed_requests_total", &[]) >= shed as f64);
    assert!(proxy.metric("sidetrack_overload_state", &[]) >= 1.0);
    // New connections are refused at once, before they cost anything.
    for _ in 0..100 {
        let mut c = Client::connect(proxy.addr);
        let _ = c.send(pad.as_bytes());
        let r = answer(&mut c).expect("refused at once");
        assert_eq!(r.status, 503);
        assert!(
            r.header("l5d-err")
                .is_some_and(|e| e.contains("near its memory budget")),
            "{:?}",
            r.headers
        );
    }
    assert!(proxy.metric("sidetrack_overload_shed_connections_total", &[]) >= 100.0);
    let used = proxy.metric("sidetrack_memory_used_bytes", &[]);
    assert!(used <= budget as f64, "{used} charged of {budget}");
    // 180 connections holding 64 KB each would be 11 MB.
    let grown = rss_kb(pid).saturating_sub(before);
    assert!(grown < 6 * 1024, "RSS grew {grown} KiB");
    // The lean client fits in what it has: served under pressure.
    for _ in 0..3 {
        assert_eq!(lean.get("web", "/", &[]).status, 200);
    }
    // The pressure goes with the hostile clients.
    drop(started);
    assert!(sidetrack_tests::eventually(10, || proxy
        .metric("sidetrack_overload_state", &[])
        == 0.0));
    assert_eq!(Client::connect(proxy.addr).get("web", "/", &[]).status, 200);
}
