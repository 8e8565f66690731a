//! The diff report where users see it, on a real proxy: `/diff.json`
//! starts empty, `POST /diff/reset` answers (and refuses a page from
//! another origin), `sidetrack diff` reads the report, and the `/diff` page
//! renders in headless Chromium, empty and (served beside a report the
//! engine made from crafted responses) full.

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::Command,
};

use sidetrack::diff::{self, DiffSettings, Engine, Report};
use sidetrack_tests::{
    browser::chromium_dom,
    client::{Client, Response, get},
    proxy::{Proxy, binary},
};

fn idle_proxy() -> Proxy {
    Proxy::start(&["--dtab", "/svc => /$/nil"])
}

fn post(proxy: &Proxy, path: &str, headers: &[String]) -> Response {
    let mut c = Client::connect(proxy.admin);
    let mut req = format!("POST {path} HTTP/1.1\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    c.send(req.as_bytes()).unwrap();
    c.read_response(false).unwrap()
}

#[test]
fn an_idle_proxy_serves_an_empty_report_and_resets_it() {
    let proxy = idle_proxy();
    let r = get(proxy.admin, "admin", "/diff.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let report: Report = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(report.requests, 0);
    assert!(report.endpoints.is_empty());
    assert_eq!(
        (report.relative_threshold_pct, report.absolute_threshold_pct),
        (20.0, 0.03)
    );
    assert_eq!((report.sample_bytes, report.samples_dropped), (0, 0));

    let host = format!("Host: {}", proxy.admin);
    // From curl or the CLI: no Origin.
    let r = post(&proxy, "/diff/reset", std::slice::from_ref(&host));
    assert_eq!((r.status, r.text().as_str()), (200, "reset\n"));
    // From the page itself.
    let own = format!("Origin: http://{}", proxy.admin);
    assert_eq!(
        post(&proxy, "/diff/reset", &[host.clone(), own]).status,
        200
    );
    // From a page elsewhere, through the user's browser.
    let r = post(
        &proxy,
        "/diff/reset",
        &[host.clone(), "Origin: http://evil.example".into()],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // A reset is a POST.
    assert_eq!(get(proxy.admin, "admin", "/diff/reset", &[]).status, 404);
}

fn sidetrack(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sidetrack_diff_reads_a_running_proxy() {
    let proxy = idle_proxy();
    let admin = proxy.admin.to_string();
    let (code, out, err) = sidetrack(&["diff", "--admin", &admin]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("0 requests compared over 0 endpoints in the last "),
        "{out}"
    );
    let with_scheme = format!("http://{admin}/");
    let (code, out, err) = sidetrack(&["diff", "--admin", &with_scheme, "--json", "--all"]);
    assert_eq!(code, 0, "{err}");
    let report: Report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(report.endpoints.is_empty());
    // Nothing listens there: exit 2, and a message.
    drop(proxy);
    let (code, out, err) = sidetrack(&["diff", "--admin", &admin]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.starts_with("sidetrack diff: "), "{err}");
}

#[test]
fn the_diff_page_renders_an_empty_report() {
    let proxy = idle_proxy();
    let dom = chromium_dom(&format!("http://{}/diff", proxy.admin));
    assert!(dom.contains("<title>Sidetrack diff</title>"), "{dom}");
    // The page fetched /diff.json and drew it: the summary, the empty
    // state shown, no error.
    assert!(
        dom.contains(r#"<span id="summary">0 requests compared over 0 endpoints in the last "#),
        "{dom}"
    );
    assert!(
        dom.contains("reported (thresholds: relative 20%, absolute 0.03%)"),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<p id="empty" class="">No responses compared yet.</p>"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<div id="error"></div>"#), "{dom}");
    assert!(dom.contains(r#"<div id="endpoints"></div>"#), "{dom}");
    assert!(
        dom.contains(r#"<button id="reset" type="button">Reset</button>"#),
        "{dom}"
    );
}

/// The page as the proxy serves it, beside a `/diff.json` that the engine
/// made from crafted responses, on a server of the test's own (the proxy's
/// data path is not what this test is about).
fn serve(page: String, report: String) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&head);
            let (kind, body) = if line.starts_with("GET /diff.json") {
                ("application/json", report.as_str())
            } else {
                ("text/html; charset=utf-8", page.as_str())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn the_diff_page_draws_endpoints_fields_and_samples() {
    let proxy = idle_proxy();
    let page = get(proxy.admin, "admin", "/diff", &[]).text();
    let engine = Engine::new(DiffSettings::default());
    let name = diff::endpoint("/svc/world", b"GET", b"/users/7?x=1", None);
    let request = diff::Request {
        method: b"GET",
        path: b"/users/7?x=1",
        headers: &[(b"Cookie", b"session=secret")],
        body: b"",
    };
    for i in 0..20 {
        let p = format!(r#"{{"name":"Ann","ts":{i},"note":"<b>hi</b>"}}"#);
        let s = format!(r#"{{"name":"Ann","ts":{},"note":"<b>hi</b>"}}"#, i + 1);
        let c = format!(
            r#"{{"name":"<script>x()</script>","ts":{},"note":"<b>hi</b>"}}"#,
            i + 2
        );
        engine.record(
            &name,
            &request,
            &diff::Response::new(200, &[], p.as_bytes()),
            &diff::Response::new(200, &[], s.as_bytes()),
            &diff::Response::new(200, &[], c.as_bytes()),
        );
    }
    let report = serde_json::to_string(&engine.report()).unwrap();
    let addr = serve(page, report);

    // Reported fields only.
    let dom = chromium_dom(&format!("http://{addr}/diff"));
    assert!(
        dom.contains(r#"<section class="endpoint" data-name="/svc/world GET /users/{id}">"#),
        "{dom}"
    );
    assert!(
        dom.contains("20 requests, 20 with a difference, 20 with noise; 1 field reported"),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<tr class="field reported" data-path="200.body.name">"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<td class="num raw">20 (100%)</td>"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<td class="num noise">0 (0%)</td>"#),
        "{dom}"
    );
    assert!(!dom.contains(r#"data-path="200.body.ts""#), "{dom}");
    // The sample: the values, and the whole exchange with the cookie
    // redacted; the candidate's markup is text, not markup.
    assert!(
        dom.contains(r#"sample: primary "Ann" · candidate "&lt;script&gt;x()&lt;/script&gt;""#),
        "{dom}"
    );
    assert!(dom.contains("GET /users/7?x=1"), "{dom}");
    assert!(dom.contains("Cookie: &lt;redacted&gt;"), "{dom}");
    assert!(!dom.contains("<script>x()"), "{dom}");
    assert!(dom.contains(r#"<div id="error"></div>"#), "{dom}");
    assert!(dom.contains(r#"<p id="empty" class="hidden">"#), "{dom}");

    // With ?all, the noise too.
    let dom = chromium_dom(&format!("http://{addr}/diff?all"));
    assert!(
        dom.contains(r#"<tr class="field quiet" data-path="200.body.ts">"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<td class="num noise">20 (100%)</td>"#),
        "{dom}"
    );
}
