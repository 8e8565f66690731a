//! Kubernetes service discovery on loopback: the `k8s` identifier and the
//! `io.l5d.k8s` namer, against a stand-in for the API server (no cluster
//! is reachable here). Every name a pod writes for a Service reaches it;
//! a per-request override stages another Service; a request that comes
//! before the namer's first sync waits for it, up to `k8s.sync_timeout_ms`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sidetrack_tests::{
    TempDir,
    backend::Backend,
    client::{self, Client},
    kube_api::{KubeApi, Pod, Service},
    proxy::Proxy,
};

fn service(name: &str, ip: &str, backend: &Backend) -> Service {
    Service {
        namespace: "default".into(),
        name: name.into(),
        cluster_ip: ip.into(),
        ports: vec![("http".into(), 80, backend.addr.port())],
        endpoints: vec![backend.addr.ip().to_string()],
        annotations: Vec::new(),
    }
}

fn start_proxy(api: &KubeApi, extra: &str) -> (TempDir, Proxy) {
    let dir = TempDir::new("k8s");
    dir.write(
        "config.yaml",
        &format!(
            "identifier: k8s\ndtab: /svc => /#/io.l5d.k8s;\nk8s:\n  enabled: true\n  api_server: {}\n{extra}",
            api.url()
        ),
    );
    let proxy = Proxy::start(&["--config", dir.path().join("config.yaml").to_str().unwrap()]);
    (dir, proxy)
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Every form of a Service's name reaches its endpoints (the Service port
/// mapped to the target port), and an override on the logical name stages
/// another Service for one request.
#[test]
fn every_name_a_pod_writes_reaches_the_service_and_overrides_stage_another() {
    let (v1, v2) = (Backend::start("world-v1"), Backend::start("world-v2"));
    let api = KubeApi::start(
        loopback(),
        vec![
            service("world", "10.96.0.10", &v1),
            service("world-v2", "10.96.0.11", &v2),
        ],
    );
    let (_dir, proxy) = start_proxy(&api, "");
    let mut c = Client::connect(proxy.addr);
    for host in [
        "world",
        "world:80",
        "world.default",
        "world.default.svc",
        "world.default.svc.cluster.local",
        "world.default.svc.cluster.local:80",
    ] {
        let r = c.get(host, "/", &[]);
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(r.header("x-backend"), Some("world-v1"), "{host}");
        assert_eq!(r.header("l5d-dst-service"), None);
    }
    let staged = c.get(
        "world",
        "/",
        &["l5d-dtab: /svc/default/80/world => /#/io.l5d.k8s/default/80/world-v2"],
    );
    assert_eq!(staged.header("x-backend"), Some("world-v2"));
    // A Service that does not exist is neg, a port it does not have too.
    client::assert_err(&c.get("nowhere", "/", &[]), 502, "neg");
    client::assert_err(&c.get("world:81", "/", &[]), 502, "neg");
    // The namer listed and watched the namespace.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")),
        "{requests:#?}"
    );
    assert!(
        requests.iter().any(|r| r.contains("watch=true")),
        "{requests:#?}"
    );
}

/// Before the first sync a request waits (the API server answers its lists
/// 800 ms late) and is then served; with a shorter `sync_timeout_ms` it is
/// answered 503 with an `l5d-err` that says why.
#[test]
fn a_request_before_the_first_sync_waits_for_it_up_to_the_timeout() {
    let v1 = Backend::start("world-v1");
    let slow = Duration::from_millis(800);
    let api = KubeApi::start_slow(loopback(), vec![service("world", "10.96.0.10", &v1)], slow);
    let (_dir, proxy) = start_proxy(&api, "  sync_timeout_ms: 5000\n");
    let started = Instant::now();
    let r = client::get(proxy.addr, "world", "/", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-backend"), Some("world-v1"));
    assert!(started.elapsed() < Duration::from_secs(5));

    let api = KubeApi::start_slow(
        loopback(),
        vec![service("world", "10.96.0.10", &v1)],
        Duration::from_secs(3),
    );
    let (_dir, proxy) = start_proxy(&api, "  sync_timeout_ms: 200\n");
    let started = Instant::now();
    let r = client::get(proxy.addr, "world", "/", &[]);
    client::assert_err(&r, 503, "k8s.sync_timeout_ms");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

/// The calling pod's namespace (the namer watches the node's pods; here
/// the client, 127.0.0.1, is a pod of `shop`): its short names are shop's,
/// a rule can match it, and the override policy can trust it.
#[test]
fn the_calling_pods_namespace_names_matches_rules_and_is_trusted() {
    let (v1, v2) = (Backend::start("world-v1"), Backend::start("world-v2"));
    let in_shop = |mut s: Service| {
        s.namespace = "shop".into();
        s
    };
    let api = KubeApi::start_with_pods(
        loopback(),
        vec![
            service("world", "10.96.0.10", &v2),
            in_shop(service("world", "10.96.0.20", &v1)),
            in_shop(service("world-v2", "10.96.0.21", &v2)),
        ],
        vec![Pod {
            namespace: "shop".into(),
            name: "client".into(),
            ip: "127.0.0.1".into(),
        }],
    );
    let rules = "  node_name: bed-node\n\
        rules:\n\
        - name: shop-beta\n  match: {namespaces: [shop], headers: [{name: x-beta, exact: 'yes'}]}\n  \
          dtab: /svc/shop/80/world => /#/io.l5d.k8s/shop/80/world-v2\n\
        overrides: {mode: trusted, trusted_namespaces: [shop]}\n";
    let (dir, proxy) = start_proxy(&api, rules);
    // The pod table fills from the namer's first list of the node's pods.
    assert!(sidetrack_tests::eventually(10, || {
        client::get(proxy.addr, "world", "/", &[]).header("x-backend") == Some("world-v1")
    }));
    let mut c = Client::connect(proxy.addr);
    // Short names are shop's (default's world would be world-v2).
    assert_eq!(
        c.get("world", "/", &[]).header("x-backend"),
        Some("world-v1")
    );
    assert_eq!(
        c.get("world.default", "/", &[]).header("x-backend"),
        Some("world-v2")
    );
    // The rule for shop's pods.
    assert_eq!(
        c.get("world", "/", &["x-beta: yes"]).header("x-backend"),
        Some("world-v2")
    );
    // Overrides from shop's pods are trusted...
    let staged = c.get(
        "world",
        "/",
        &["l5d-dtab: /svc/shop/80/world => /#/io.l5d.k8s/shop/80/world-v2"],
    );
    assert_eq!(staged.header("x-backend"), Some("world-v2"));
    // ...and from no other namespace's.
    dir.write(
        "config.yaml",
        &format!(
            "identifier: k8s\ndtab: /svc => /#/io.l5d.k8s;\nk8s:\n  enabled: true\n  api_server: {}\n  node_name: bed-node\n\
             overrides: {{mode: trusted, trusted_namespaces: [platform]}}\nwatch_interval_ms: 50\n",
            api.url()
        ),
    );
    assert!(sidetrack_tests::eventually(10, || {
        client::get(
            proxy.addr,
            "world",
            "/",
            &["l5d-dtab: /svc/shop/80/world => /#/io.l5d.k8s/shop/80/world-v2"],
        )
        .status
            == 403
    }));
}
