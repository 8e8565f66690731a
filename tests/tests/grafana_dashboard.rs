//! deploy/grafana/sidetrack-dashboard.json against a real proxy's
//! `/metrics`: every metric a panel (or the `service` variable) queries is
//! exported, with every label the query selects or groups by. A renamed
//! metric or label breaks this test, not a dashboard nobody looks at.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use sidetrack_tests::{client::Client, proxy::Proxy};

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/sidetrack-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every query of the dashboard: the panels' and the variables'.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in d["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        for t in panel["targets"].as_array().expect("targets") {
            out.push((
                title.to_owned(),
                t["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("${}", v["name"].as_str().unwrap()), q.to_owned()));
        }
    }
    out
}

/// The metric names in a PromQL expression: the identifiers that start
/// with `sidetrack_`.
fn metric_names(expr: &str) -> Vec<&str> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    expr.match_indices("sidetrack_")
        .filter(|(i, _)| !expr[..*i].ends_with(is_ident))
        .map(|(i, _)| {
            let end = expr[i..]
                .find(|c| !is_ident(c))
                .map_or(expr.len(), |n| i + n);
            &expr[i..end]
        })
        .collect()
}

/// The label names an expression selects on (`{name="..."}`) or groups by
/// (`by (a, b)`).
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in expr.match_indices("by (") {
        let list = &expr[i + 4..i + 4 + expr[i + 4..].find(')').unwrap()];
        out.extend(list.split(',').map(|l| l.trim().to_owned()));
    }
    for (i, _) in expr.match_indices('{') {
        let body = &expr[i + 1..i + 1 + expr[i + 1..].find('}').unwrap()];
        for matcher in body.split(',') {
            let name = matcher.split(['=', '!']).next().unwrap().trim();
            out.insert(name.to_owned());
        }
    }
    out
}

/// Each sample name in an exposition, with the label names it carries.
fn exported(text: &str) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').unwrap()];
            // Label values may hold commas; names are before `="`.
            for part in body.split("\",") {
                if let Some((k, _)) = part.split_once("=\"") {
                    labels.insert(k.trim().to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let (_dir, _web, proxy) = Proxy::with_web_backend("grafana", "");
    // Traffic of every kind the panels show: answers, a 5xx, an override,
    // an error of the proxy's.
    let mut c = Client::connect(proxy.addr);
    assert_eq!(c.get("web", "/", &[]).status, 200);
    assert_eq!(c.get("web", "/status/503", &[]).status, 503);
    assert_eq!(
        c.get("web", "/", &["l5d-dtab: /svc/web => /#/io.l5d.fs/web"])
            .status,
        200
    );
    assert_eq!(c.get("nosuch", "/", &[]).status, 502);
    let text = proxy.metrics();
    let exported = exported(&text);

    let d = dashboard();
    assert_eq!(d["uid"], "sidetrack-versions");
    let queries = queries(&d);
    assert!(queries.len() >= 9, "{queries:?}");
    let mut seen = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no sidetrack metric in {expr}");
        let mut labels = BTreeSet::new();
        for name in names {
            let Some(l) = exported.get(name) else {
                panic!("{title}: {name} is not in /metrics:\n{text}");
            };
            labels.extend(l.iter().cloned());
            seen.insert(name);
        }
        for label in label_names(expr) {
            assert!(
                labels.contains(&label),
                "{title}: no metric of {expr} has the label {label} ({labels:?})"
            );
        }
    }
    // The panels of /dashboard: rate, success, latency, bytes.
    for name in [
        "sidetrack_requests_total",
        "sidetrack_responses_total",
        "sidetrack_request_duration_seconds_bucket",
        "sidetrack_request_bytes_total",
        "sidetrack_response_bytes_total",
        "sidetrack_errors_total",
    ] {
        assert!(seen.contains(name), "no panel queries {name}");
    }
}

#[test]
fn the_query_parsing_finds_names_and_labels() {
    let expr = r#"histogram_quantile(0.5, sum by (le, dst) (rate(sidetrack_request_duration_seconds_bucket{service=~"$service",class!="x"}[5m]))) / foo_sidetrack_x"#;
    assert_eq!(
        metric_names(expr),
        ["sidetrack_request_duration_seconds_bucket"]
    );
    let labels: Vec<_> = label_names(expr).into_iter().collect();
    assert_eq!(labels, ["class", "dst", "le", "service"]);
}
