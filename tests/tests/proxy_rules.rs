//! Versions per customer and plan: routing rules pick the version from who
//! is asking, and weighted rollouts stick per customer. Real sockets on
//! loopback, real backends, the real binary.

use std::collections::HashMap;

use sidetrack_tests::{
    TempDir,
    backend::Backend,
    client::{self, Client},
    eventually,
    proxy::Proxy,
};

const DTAB: &str = "/srv => /#/io.l5d.fs; /host => /srv; /svc => /host";

struct Bed {
    dir: TempDir,
    _backends: Vec<Backend>,
    proxy: Proxy,
}

/// Backends world-v1, -v2 and -v3 behind the file namer; `world` routes
/// by `world_dtab` (an entry for /host/world, in a watched dtab file).
fn bed(world_dtab: &str, config: &str) -> Bed {
    let dir = TempDir::new("rules");
    let backends: Vec<Backend> = ["world-v1", "world-v2", "world-v3"]
        .into_iter()
        .map(Backend::start)
        .collect();
    for b in &backends {
        dir.write(&b.name, &b.fs_line());
    }
    dir.write("dtab", world_dtab);
    dir.write("config.yaml", &format!("watch_interval_ms: 50\n{config}"));
    let proxy = Proxy::start(&[
        "--dtab",
        DTAB,
        "--dtab-file",
        dir.path().join("dtab").to_str().unwrap(),
        "--fs-dir",
        dir.str(),
        "--config",
        dir.path().join("config.yaml").to_str().unwrap(),
    ]);
    Bed {
        dir,
        _backends: backends,
        proxy,
    }
}

const PLANS: &str = "rules:
  - name: acme-beta
    match:
      headers: [{name: x-customer, exact: acme}]
    dtab: /host/world => /srv/world-v3
  - name: free-plan
    match:
      cookies: [{name: plan, exact: free}]
    dtab: /host/world => /srv/world-v2
";

/// Two customers and two plans land on their versions, every time: the
/// first rule that matches wins, a request's own override still has the
/// last word, the matched rule labels the metrics, and the delegator
/// shows the rule for pasted headers.
#[test]
fn customers_and_plans_land_on_their_versions() {
    let b = bed("/host/world => /srv/world-v1", PLANS);
    let cases: [(&str, &[&str], &str); 4] = [
        ("acme on the paid plan", &["x-customer: acme"], "world-v3"),
        (
            "acme on the free plan (the first rule wins)",
            &["x-customer: acme", "cookie: a=1; plan=free"],
            "world-v3",
        ),
        (
            "globex on the free plan",
            &["x-customer: globex", "cookie: plan=free"],
            "world-v2",
        ),
        (
            "initech on the paid plan",
            &["x-customer: initech", "cookie: plan=paid"],
            "world-v1",
        ),
    ];
    for (who, headers, want) in cases {
        let mut c = Client::connect(b.proxy.addr);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..1_000 {
            let r = c.get("world", "/", headers);
            *seen
                .entry(r.header("x-backend").unwrap_or("none").to_owned())
                .or_default() += 1;
        }
        assert_eq!(seen, HashMap::from([(want.to_owned(), 1_000)]), "{who}");
    }
    // The request's own override comes after the rule's entries.
    let r = client::get(
        b.proxy.addr,
        "world",
        "/",
        &["x-customer: acme", "l5d-dtab: /host/world => /srv/world-v1"],
    );
    assert_eq!(r.header("x-backend"), Some("world-v1"));
    // The rule's entries are not forwarded as the request's context.
    let r = client::get(b.proxy.addr, "world", "/", &["x-customer: acme"]);
    assert!(r.json()["headers"].get("l5d-ctx-dtab").is_none());
    // The rule as a metrics label.
    assert_eq!(
        b.proxy.metric(
            "sidetrack_requests_total",
            &[("rule", "acme-beta"), ("dst", "/#/io.l5d.fs/world-v3")]
        ),
        2_001.0
    );
    assert_eq!(
        b.proxy
            .metric("sidetrack_requests_total", &[("rule", "free-plan")]),
        1_000.0
    );
    // The delegator, with a request's headers pasted in.
    let body = r#"{"path": "/svc/world", "dtab": "", "headers": "X-Customer: acme\nAccept: */*"}"#;
    let tree = post(&b.proxy, body);
    assert_eq!(tree["rule"]["name"], "acme-beta");
    assert!(tree.to_string().contains("/#/io.l5d.fs/world-v3"), "{tree}");
    let tree = post(
        &b.proxy,
        r#"{"path": "/svc/world", "headers": "x-customer: nobody"}"#,
    );
    assert!(tree.get("rule").is_none(), "{tree}");
}

fn post(p: &Proxy, body: &str) -> serde_json::Value {
    let mut c = Client::connect(p.admin);
    c.send(
        format!(
            "POST /delegator.json HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Rules are reloaded with the config file.
#[test]
fn rules_reload_live() {
    let b = bed("/host/world => /srv/world-v1", "");
    let acme = ["x-customer: acme"];
    assert_eq!(
        client::get(b.proxy.addr, "world", "/", &acme).header("x-backend"),
        Some("world-v1")
    );
    b.dir
        .write("config.yaml", &format!("watch_interval_ms: 50\n{PLANS}"));
    assert!(eventually(10, || client::get(
        b.proxy.addr,
        "world",
        "/",
        &acme
    )
    .header("x-backend")
        == Some("world-v3")));
}

/// Which version each of `customers` gets, three times each (which must
/// agree).
fn versions(p: &Proxy, customers: usize) -> Vec<String> {
    let mut c = Client::connect(p.addr);
    (0..customers)
        .map(|i| {
            let header = format!("x-customer-id: customer-{i}");
            let got: Vec<String> = (0..3)
                .map(|_| {
                    c.get("world", "/", &[&header])
                        .header("x-backend")
                        .unwrap()
                        .to_owned()
                })
                .collect();
            assert!(got.iter().all(|v| *v == got[0]), "customer-{i}: {got:?}");
            got[0].clone()
        })
        .collect()
}

/// A weighted rollout chosen by the customer id: each customer always gets
/// the same version, the shares stay within a binomial band, and when the
/// rollout grows from 10% to 20% every customer it had keeps it. A
/// request without the id is chosen per request.
#[test]
fn a_sticky_rollout_keeps_its_customers_as_it_grows() {
    let b = bed(
        "/host/world => 0.1 * /srv/world-v2 & 0.9 * /srv/world-v1",
        "rollouts:\n  sticky_header: X-Customer-Id\n",
    );
    let before = versions(&b.proxy, 1_000);
    let on_v2 = |v: &[String]| v.iter().filter(|v| *v == "world-v2").count();
    // n = 1,000, p = 0.1: mean 100, sd 9.5.
    assert!((55..145).contains(&on_v2(&before)), "{}", on_v2(&before));

    b.dir.write(
        "dtab",
        "/host/world => 0.2 * /srv/world-v2 & 0.8 * /srv/world-v1",
    );
    // Until the reload shows: one request per customer (a customer's
    // answers may differ across the reload itself, so they are compared
    // only after it, below).
    assert!(eventually(10, || {
        let mut c = Client::connect(b.proxy.addr);
        let now = (0..200)
            .filter(|i| {
                let header = format!("x-customer-id: customer-{i}");
                c.get("world", "/", &[&header]).header("x-backend") == Some("world-v2")
            })
            .count();
        now > on_v2(&before[..200])
    }));
    let after = versions(&b.proxy, 1_000);
    // p = 0.2: mean 200, sd 12.6.
    assert!((140..260).contains(&on_v2(&after)), "{}", on_v2(&after));
    for (i, (was, now)) in before.iter().zip(&after).enumerate() {
        assert!(
            was != "world-v2" || now == "world-v2",
            "customer-{i} left the rollout as it grew"
        );
    }

    // Without the id: per request, so both versions come up.
    let mut c = Client::connect(b.proxy.addr);
    let anonymous: Vec<String> = (0..200)
        .map(|_| {
            c.get("world", "/", &[])
                .header("x-backend")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(anonymous.iter().any(|v| v == "world-v1") && anonymous.iter().any(|v| v == "world-v2"));
}
