//! The per-version dashboard on a real proxy: a scripted sequence of
//! requests (known counts per version, chosen by the base dtab, a rule and
//! overrides; known latencies from a backend that sleeps; known 5xx from a
//! failing one; the proxy's own errors) and what `/dashboard.json` and the
//! `/dashboard` page, rendered in headless Chromium, say about it.

use std::net::TcpListener;

use serde_json::Value;
use sidetrack_tests::{
    TempDir,
    backend::Backend,
    browser::chromium_dom,
    client::{Client, get, until_close},
    eventually,
    proxy::Proxy,
};

const CONFIG: &str = "dashboard:
  flag_min_requests: 5
rules:
  - name: beta
    match:
      headers: [{name: x-plan, exact: beta}]
    dtab: /svc/web => /#/io.l5d.fs/web-v3
";

/// The versions: `web` (fast), `web-v2` (sleeps 200 ms), `web-v3` (its
/// requests ask for 503) and `web-dead` (nothing listens there).
struct Bed {
    _dir: TempDir,
    _backends: Vec<Backend>,
    proxy: Proxy,
}

fn bed() -> Bed {
    let dir = TempDir::new("dashboard");
    let backends: Vec<Backend> = ["web", "web-v2", "web-v3"]
        .into_iter()
        .map(Backend::start)
        .collect();
    for b in &backends {
        dir.write(&b.name, &b.fs_line());
    }
    backends[1]
        .delay_ms
        .store(200, std::sync::atomic::Ordering::Relaxed);
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    dir.write("web-dead", &format!("{} {}\n", closed.ip(), closed.port()));
    let proxy = Proxy::with_fs_namer(&dir, CONFIG, &[]);
    Bed {
        _dir: dir,
        _backends: backends,
        proxy,
    }
}

const OVERRIDE_V2: &str = "l5d-dtab: /svc/web => /#/io.l5d.fs/web-v2";
const OVERRIDE_DEAD: &str = "l5d-dtab: /svc/web => /#/io.l5d.fs/web-dead";

/// 100 to the base version (enough that its p99 is not the first
/// request's, which waited for the binding and the first connection), 10 overridden to the slow one, 25 by the rule
/// to the failing one (503s), 5 overridden to the dead one (the proxy's
/// 502s), 3 to a name that binds to nothing, 2 that are not HTTP.
fn script(proxy: &Proxy) {
    let mut c = Client::connect(proxy.addr);
    for _ in 0..100 {
        assert_eq!(c.get("web", "/", &[]).status, 200);
    }
    for _ in 0..10 {
        assert_eq!(c.get("web", "/", &[OVERRIDE_V2]).status, 200);
    }
    for _ in 0..25 {
        assert_eq!(c.get("web", "/status/503", &["x-plan: beta"]).status, 503);
    }
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "web", "/", &[OVERRIDE_DEAD]).status, 502);
    }
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "nosuch", "/", &[]).status, 502);
    }
    for _ in 0..2 {
        let answer = until_close(proxy.addr, "NOT HTTP AT ALL\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    // An exchange is told to the observers once it ended, which for a
    // connection the proxy closes can be just after the client saw it.
    let total = |d: &Value| -> u64 {
        d["names"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| n["rows"].as_array().unwrap())
            .map(|r| r["windows"]["15m"]["requests"].as_u64().unwrap())
            .sum()
    };
    assert!(
        eventually(5, || total(&dashboard(proxy)) == SCRIPTED),
        "{:#}",
        dashboard(proxy)
    );
}

/// The requests [`script`] makes.
const SCRIPTED: u64 = 100 + 10 + 25 + 5 + 3 + 2;

fn dashboard(proxy: &Proxy) -> Value {
    let r = get(proxy.admin, "admin", "/dashboard.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// The row of `name` and `dst` (with its `via`).
fn row<'a>(d: &'a Value, name: &str, dst: &str) -> &'a Value {
    d["names"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| {
            n["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["dst"] == dst)
        })
        .unwrap_or_else(|| panic!("no row {name} {dst} in {d:#}"))
}

#[test]
fn the_numbers_match_a_scripted_sequence() {
    let bed = bed();
    script(&bed.proxy);
    let d = dashboard(&bed.proxy);

    let base = row(&d, "/svc/web", "/#/io.l5d.fs/web");
    assert_eq!(base["via"], "base");
    let w = &base["windows"]["1m"];
    assert_eq!(w["requests"], 100, "{w:#}");
    assert_eq!(
        (&w["errors_5xx"], &w["errors_proxy"]),
        (&0.into(), &0.into())
    );
    assert_eq!(w["success_rate"], 1.0);
    assert_eq!(w["flagged"], false, "{w:#}");
    let request = "GET / HTTP/1.1\r\nHost: web\r\n\r\n".len() as u64;
    assert_eq!(w["bytes_in"], 100 * request, "{w:#}");
    assert!(w["bytes_out"].as_u64().unwrap() > 100 * 100, "{w:#}");
    assert!(w["rps"].as_f64().unwrap() > 0.0, "{w:#}");
    // The same requests over the longer windows.
    for win in ["5m", "15m"] {
        assert_eq!(base["windows"][win]["requests"], 100);
    }

    // The slow version: 200 ms, to within a histogram bucket, and much
    // slower than its siblings.
    let slow = row(&d, "/svc/web", "/#/io.l5d.fs/web-v2");
    assert_eq!(slow["via"], "override");
    let w = &slow["windows"]["1m"];
    assert_eq!(w["requests"], 10);
    for p in ["p50_ms", "p95_ms", "p99_ms"] {
        let v = w[p].as_f64().unwrap();
        assert!((200.0..=226.0).contains(&v), "{p} {v}: {w:#}");
    }
    assert_eq!(w["flagged"], true, "{w:#}");
    assert!(w["why"].as_str().unwrap().starts_with("p99 "), "{w:#}");
    assert!(base["windows"]["1m"]["p99_ms"].as_f64().unwrap() < 100.0);

    // The failing version, chosen by the rule.
    let failing = row(&d, "/svc/web", "/#/io.l5d.fs/web-v3");
    assert_eq!(
        (&failing["via"], &failing["rule"]),
        (&"rule".into(), &"beta".into())
    );
    let w = &failing["windows"]["1m"];
    assert_eq!((&w["requests"], &w["errors_5xx"]), (&25.into(), &25.into()));
    assert_eq!(w["success_rate"], 0.0);
    assert_eq!(w["flagged"], true, "{w:#}");
    assert!(
        w["why"]
            .as_str()
            .unwrap()
            .starts_with("errors 100.0% against "),
        "{w:#}"
    );

    // The dead version: the proxy's own errors.
    let dead = row(&d, "/svc/web", "/#/io.l5d.fs/web-dead");
    let w = &dead["windows"]["1m"];
    assert_eq!((&w["requests"], &w["errors_proxy"]), (&5.into(), &5.into()));
    assert_eq!(w["errors_5xx"], 0, "the proxy's 502s are not the backend's");
    assert_eq!(w["flagged"], true, "{w:#}");

    // Requests that reached no version: by name, or unidentified.
    let w = &row(&d, "/svc/nosuch", "(none)")["windows"]["1m"];
    assert_eq!((&w["requests"], &w["errors_proxy"]), (&3.into(), &3.into()));
    assert_eq!(w["flagged"], false, "no version to judge");
    let w = &row(&d, "(unidentified)", "(none)")["windows"]["1m"];
    assert_eq!((&w["requests"], &w["errors_proxy"]), (&2.into(), &2.into()));

    assert_eq!(d["bucket_secs"], 10);
    assert_eq!(d["max_rows"], 256);
    assert_eq!(d["rows_used"], 6, "{d:#}");
}

/// The text a cell of the page shows for `field` of a window, as the
/// page's script writes it.
fn shown(w: &Value, field: &str) -> String {
    let v = &w[field];
    match field {
        "success_rate" => format!("{:.1}%", v.as_f64().unwrap() * 100.0),
        "p50_ms" | "p95_ms" | "p99_ms" => format!("{:.1} ms", v.as_f64().unwrap()),
        _ => v.to_string(),
    }
}

#[test]
fn the_page_shows_the_same_numbers() {
    let bed = bed();
    script(&bed.proxy);
    let dom = chromium_dom(&format!("http://{}/dashboard?window=15m", bed.proxy.admin));
    let d = dashboard(&bed.proxy);
    assert!(dom.contains("<title>Sidetrack dashboard</title>"), "{dom}");
    assert!(dom.contains(r#"<div id="error"></div>"#), "{dom}");
    assert!(dom.contains(r#"<span id="summary">3 names, 6 rows shown, 3 flagged; 6 of 256 rows in use, 10 s buckets; updated "#), "{dom}");
    for (name, dst, via, flagged) in [
        ("/svc/web", "/#/io.l5d.fs/web", "base", false),
        ("/svc/web", "/#/io.l5d.fs/web-v2", "override", true),
        ("/svc/web", "/#/io.l5d.fs/web-v3", "rule", true),
        ("/svc/web", "/#/io.l5d.fs/web-dead", "override", true),
        ("/svc/nosuch", "(none)", "base", false),
    ] {
        let section = dom
            .find(&format!(r#"<section data-name="{name}">"#))
            .unwrap_or_else(|| panic!("no section {name}: {dom}"));
        let attrs = format!(r#"data-dst="{dst}" data-via="{via}">"#);
        let at = section
            + dom[section..]
                .find(&attrs)
                .unwrap_or_else(|| panic!("no row {dst} {via}: {dom}"));
        let tr_start = dom[..at].rfind("<tr").unwrap();
        let tr = &dom[tr_start..at + dom[at..].find("</tr>").unwrap()];
        assert_eq!(tr.starts_with(r#"<tr class="flagged""#), flagged, "{tr}");
        let w = &row(&d, name, dst)["windows"]["15m"];
        for field in [
            "requests",
            "success_rate",
            "errors_5xx",
            "errors_proxy",
            "p50_ms",
            "p99_ms",
        ] {
            let cell = format!(r#"<td class="num {field}">{}</td>"#, shown(w, field));
            assert!(tr.contains(&cell), "{cell} not in {tr}");
        }
        if flagged {
            let why = format!("⚠ {}", w["why"].as_str().unwrap());
            assert!(tr.contains(&why), "{why} not in {tr}");
        }
    }
    // The rule's name is shown with its via.
    assert!(
        dom.contains(r#"<span class="via via-rule">rule beta</span>"#),
        "{dom}"
    );
}

#[test]
fn the_dashboard_can_be_off() {
    let dir = TempDir::new("dashboard-off");
    let proxy = Proxy::with_fs_namer(&dir, "dashboard:\n  enabled: false\n", &[]);
    for path in ["/dashboard", "/dashboard.json"] {
        let r = get(proxy.admin, "admin", path, &[]);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(
            r.text(),
            "the dashboard is off (dashboard.enabled: false)\n"
        );
    }
}

#[test]
fn copies_show_on_mirror_rows() {
    let dir = TempDir::new("dashboard-mirror");
    let backends: Vec<Backend> = ["web", "web-v2"].into_iter().map(Backend::start).collect();
    for b in &backends {
        dir.write(&b.name, &b.fs_line());
    }
    let config = "mirrors:\n  - {name: /svc/web, to: /#/io.l5d.fs/web-v2}\n";
    let proxy = Proxy::with_fs_namer(&dir, config, &[]);
    let mut c = Client::connect(proxy.addr);
    for _ in 0..20 {
        assert_eq!(c.get("web", "/status/503", &[]).status, 503);
    }
    // Copies run after the live answer: their rows fill a moment later.
    let mirrored = |d: &Value| {
        d["names"].as_array().unwrap().iter().any(|n| {
            n["rows"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["via"] == "mirror" && r["windows"]["1m"]["requests"] == 20)
        })
    };
    assert!(
        eventually(5, || mirrored(&dashboard(&proxy))),
        "{:#}",
        dashboard(&proxy)
    );
    let d = dashboard(&proxy);
    let copies = row(&d, "/svc/web", "/#/io.l5d.fs/web-v2");
    assert_eq!(copies["via"], "mirror");
    let w = &copies["windows"]["1m"];
    assert_eq!(
        (&w["errors_5xx"], &w["errors_proxy"]),
        (&20.into(), &0.into())
    );
    let request = "GET /status/503 HTTP/1.1\r\nHost: web\r\n\r\n".len() as u64;
    assert!(w["bytes_in"].as_u64().unwrap() >= 20 * request, "{w:#}");
    let live = row(&d, "/svc/web", "/#/io.l5d.fs/web");
    assert_eq!(live["via"], "base");
    assert_eq!(live["windows"]["1m"]["requests"], 20);
}
