//! Root tests: transparent interception on the netns test bed. Apps in pods
//! know nothing of the proxy; eBPF (or nftables) sends their connects to it.
//! Each test makes its own node, pods and proxy (see `xtask::staging`) and
//! tears them down, also when it fails.

use std::{
    net::SocketAddrV4,
    process::Command,
    time::{Duration, Instant},
};

use sidetrack_tests::{Fnv64, pattern, require_root};
use xtask::staging::{
    APP_PORT, Bins, EXCLUDED_PORT, Mode, STAGE_V2, Staging, metric, world_service,
};

fn bins() -> Bins {
    let dir = sidetrack_tests::proxy::binary()
        .parent()
        .unwrap()
        .to_path_buf();
    Bins {
        sidetrack: sidetrack_tests::proxy::binary(),
        app: dir.join("demo-app"),
        app_args: vec![],
    }
}

fn start(tag: &str, mode: Mode) -> Staging {
    require_root();
    Staging::start(tag, mode, bins())
        .unwrap_or_else(|e| panic!("start the {mode:?} scenario: {e:#}"))
}

fn counter(s: &Staging, name: &str) -> f64 {
    metric(&s.metrics().unwrap(), name, &[])
}

/// `curl` from the client pod straight at a pod address (intercepted or
/// not, depending on the policy), with a Host header naming a service.
fn get_pod(s: &Staging, ip: std::net::Ipv4Addr, port: u16, host: &str) -> String {
    let url = format!("http://{ip}:{port}/");
    let out = s
        .curl(
            &url,
            SocketAddrV4::new(ip, port),
            &[&format!("Host: {host}")],
        )
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The staging routes of the tutorial, in either mode.
fn routes_and_stages(s: &Staging) {
    let plain = s.get_hello(&[]).unwrap();
    assert_eq!(
        plain,
        format!("Hello ({}) world ({})!!", s.hello.ip(), s.world_v1.ip())
    );
    let staged = s.get_hello(&[STAGE_V2]).unwrap();
    assert_eq!(
        staged,
        format!("Hello ({}) earth ({})!!", s.hello.ip(), s.world_v2.ip())
    );
    // The override was for that request only.
    assert_eq!(s.get_hello(&[]).unwrap(), plain);
    let m = s.metrics().unwrap();
    let dst = |d: &str, o: &str| {
        metric(
            &m,
            "sidetrack_requests_total",
            &[("dst", d), ("override", o)],
        )
    };
    assert_eq!(dst("/#/io.l5d.fs/world-v1", "false"), 2.0, "{m}");
    // hello received the override as l5d-ctx-dtab and passed it on, as apps
    // must: the world hop saw it and counted it as an override.
    assert_eq!(dst("/#/io.l5d.fs/world-v2", "true"), 1.0, "{m}");
    assert_eq!(dst("/#/io.l5d.fs/hello", "true"), 1.0, "{m}");
}

#[test]
fn ebpf_routes_unaware_apps_and_stages_one_request() {
    let s = start("ebpf-route", Mode::Ebpf);
    routes_and_stages(&s);
    // Three client->hello and three hello->world connects were rewritten.
    assert_eq!(counter(&s, "sidetrack_ebpf_connect_intercepted_total"), 6.0);
    // The proxy's own connects (to the pods) were seen and left alone:
    // marked sockets, or the requests would have looped back to it.
    assert!(counter(&s, "sidetrack_ebpf_connect_own_total") >= 2.0);
    assert_eq!(counter(&s, "sidetrack_ebpf_orig_dst_filed_total"), 6.0);
    // Every hop (app->proxy, proxy->pod and back) was in the SOCKHASH.
    assert!(counter(&s, "sidetrack_ebpf_msg_redirected_total") >= 24.0);
    assert_eq!(counter(&s, "sidetrack_ebpf_sockhash_add_failed_total"), 0.0);
}

#[test]
fn ebpf_redirects_large_bodies_byte_exact() {
    let s = start("ebpf-bytes", Mode::Ebpf);
    let before = counter(&s, "sidetrack_ebpf_bytes_redirected_total");
    let n = 6 << 20;
    let body = s
        .curl(&format!("http://world/bytes/{n}"), world_service(), &[])
        .unwrap();
    assert_eq!(body.len(), n);
    assert_eq!(
        Fnv64::of(&body),
        Fnv64::of(&pattern(n)),
        "the body changed on the way"
    );
    let redirected = counter(&s, "sidetrack_ebpf_bytes_redirected_total") - before;
    // Pod to proxy and proxy to client, both skipping the stack.
    assert!(
        redirected >= 2.0 * n as f64,
        "only {redirected} bytes redirected for a {n}-byte body"
    );
}

#[test]
fn excluded_ports_and_other_cidrs_are_untouched() {
    let s = start("ebpf-policy", Mode::Ebpf);
    let before = counter(&s, "sidetrack_ebpf_connect_intercepted_total");
    // hello's IP is intercepted, but not on the excluded port: the aside
    // server there answers itself.
    let aside = get_pod(&s, s.hello.ip(), EXCLUDED_PORT, "hello");
    assert_eq!(aside, format!("hello-aside ({})", s.hello.ip()));
    // world-v2's IP is in no intercepted CIDR: reached directly, not routed
    // by the dtab (which would send "world" to v1).
    let direct = get_pod(&s, s.world_v2.ip(), APP_PORT, "world");
    assert_eq!(direct, format!("earth ({})", s.world_v2.ip()));
    // Loopback inside a pod is never intercepted.
    let mut cmd = s.hello.command("curl");
    cmd.args([
        "--silent",
        "--max-time",
        "5",
        &format!("http://127.0.0.1:{EXCLUDED_PORT}/"),
    ]);
    let out = cmd.output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-aside (127.0.0.1)"
    );
    assert_eq!(
        counter(&s, "sidetrack_ebpf_connect_intercepted_total"),
        before
    );
    // An intercepted pod address is routed by Host through the proxy.
    let routed = get_pod(&s, s.world_v1.ip(), APP_PORT, "world");
    assert_eq!(routed, format!("world ({})", s.world_v1.ip()));
    assert_eq!(
        counter(&s, "sidetrack_ebpf_connect_intercepted_total"),
        before + 1.0
    );
}

#[test]
fn a_dead_proxy_fails_open() {
    let mut s = start("ebpf-failopen", Mode::Ebpf);
    let via_proxy = get_pod(&s, s.world_v1.ip(), APP_PORT, "world");
    assert_eq!(via_proxy, format!("world ({})", s.world_v1.ip()));
    let requests = metric(
        &s.metrics().unwrap(),
        "sidetrack_requests_total",
        &[("dst", "/#/io.l5d.fs/world-v1")],
    );
    assert_eq!(requests, 1.0, "the first request went through the proxy");
    s.kill_proxy().unwrap();
    // The programs went with the process: a new connect to the same
    // address reaches the pod itself. Measure how soon.
    let killed = Instant::now();
    let mut direct = None;
    for _ in 0..100 {
        let url = format!("http://{}:{APP_PORT}/", s.world_v1.ip());
        if let Ok(out) = s.curl(
            &url,
            SocketAddrV4::new(s.world_v1.ip(), APP_PORT),
            &["Host: world"],
        ) {
            direct = Some(String::from_utf8(out).unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed();
    assert_eq!(
        direct.as_deref(),
        Some(format!("world ({})", s.world_v1.ip()).as_str())
    );
    eprintln!("fail-open: first direct connection {took:?} after the proxy died");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // And the proxy can come back: interception resumes.
    s.start_proxy().unwrap();
    routes_and_stages(&s);
}

#[test]
fn iptables_mode_routes_the_same_and_removes_its_rules() {
    let mut s = start("nft-route", Mode::Iptables);
    let table = format!(
        "sidetrack_{}_{}",
        s.proxy_addr.ip().to_string().replace('.', "_"),
        s.proxy_addr.port()
    );
    assert!(nft_tables().contains(&table), "rules installed");
    routes_and_stages(&s);
    // No eBPF here.
    assert_eq!(counter(&s, "sidetrack_ebpf_connect_intercepted_total"), 0.0);
    let status = s.stop_proxy().unwrap();
    assert!(status.success(), "{status}");
    assert!(!nft_tables().contains(&table), "rules removed on exit");
}

fn nft_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn interception_needs_a_node_address_and_root_checks_are_clear() {
    require_root();
    // eBPF mode on 0.0.0.0 cannot tell where to send connects.
    let out = Command::new(sidetrack_tests::proxy::binary())
        .args([
            "run",
            "--intercept",
            "ebpf",
            "--listen",
            "0.0.0.0:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node's own IPv4 address"));
    // A cgroup that is not one is refused with its path named.
    let cfg = std::env::temp_dir().join(format!("sidetrack-badcg-{}.yaml", std::process::id()));
    std::fs::write(&cfg, "interception:\n  cgroup: /tmp\n").unwrap();
    let out = Command::new(sidetrack_tests::proxy::binary())
        .args([
            "run",
            "--intercept",
            "ebpf",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/tmp is not a cgroup v2 directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
