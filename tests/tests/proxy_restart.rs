//! Root tests: restarts without a gap, on the netns test bed in eBPF mode
//! (and once in iptables mode).
//!
//! A closed-loop client in a pod (an app that knows nothing of the proxy)
//! calls world-v1's pod address, which interception steers to the proxy,
//! with the override that stages world-v2: an answer from world-v2 was
//! routed by the proxy's dtab, one from world-v1 went straight to the pod.
//! While it runs, new proxies take over from the running one (as a
//! DaemonSet's rolling update with a surge starts the new pod before it
//! deletes the old), or fail to.

use std::{
    io::{Read, Write},
    process::{Child, Stdio},
    time::Duration,
};

use sidetrack_tests::require_root;
use xtask::staging::{APP_PORT, Bins, Mode, PROXY_MARK, STAGE_V2, Staging, metric};

fn start(tag: &str, mode: Mode) -> Staging {
    require_root();
    let dir = sidetrack_tests::proxy::binary()
        .parent()
        .unwrap()
        .to_path_buf();
    let bins = Bins {
        sidetrack: sidetrack_tests::proxy::binary(),
        app: dir.join("demo-app"),
        app_args: vec![],
    };
    Staging::start(tag, mode, bins).unwrap_or_else(|e| panic!("start the scenario: {e:#}"))
}

/// The loop client, running in the client pod; killed if the test fails.
struct LoopClient(Option<Child>);

#[derive(Debug)]
struct Tally {
    ok: u64,
    failed: u64,
    resent: u64,
    bodies: serde_json::Map<String, serde_json::Value>,
    errors: Vec<serde_json::Value>,
}

impl LoopClient {
    /// Four loops (two opening a connection per request, two keeping theirs
    /// alive) to world-v1's pod, staging world-v2; they stop after 90 s at
    /// most.
    fn start(s: &Staging) -> LoopClient {
        let bin = sidetrack_tests::proxy::binary()
            .parent()
            .unwrap()
            .join("loop-client");
        let mut cmd = s.client.command(&bin);
        cmd.arg(format!("{}:{APP_PORT}", s.world_v1.ip()))
            .args(["world", "4", "90", STAGE_V2])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        LoopClient(Some(cmd.spawn().expect("start loop-client")))
    }

    fn stop(mut self) -> Tally {
        let mut child = self.0.take().unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"stop\n");
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(child.wait().unwrap().success(), "loop-client: {out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
        Tally {
            ok: v["ok"].as_u64().unwrap(),
            failed: v["failed"].as_u64().unwrap(),
            resent: v["resent"].as_u64().unwrap(),
            bodies: v["bodies"].as_object().unwrap().clone(),
            errors: v["errors"].as_array().unwrap().clone(),
        }
    }
}

impl Drop for LoopClient {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn counter(s: &Staging, name: &str) -> f64 {
    metric(&s.metrics().unwrap(), name, &[])
}

/// Asserts that every request was answered, each by world-v2 (through
/// the proxy's dtab and the override).
/// `restarts` bounds the requests sent again: a draining proxy answers
/// with `Connection: close` and keeps an idle keep-alive connection open
/// for `shutdown_idle_ms` (500 ms), so a loop resends only when it sat idle
/// longer than that just then (none did in these runs; the bound allows
/// one a restart, for a machine that stalls a loop).
fn assert_all_routed(s: &Staging, t: &Tally, at_least: u64, restarts: u64) {
    let v2 = format!("earth ({})", s.world_v2.ip());
    assert_eq!(t.failed, 0, "failed requests: {t:?}");
    assert!(t.errors.is_empty(), "{t:?}");
    assert!(t.resent <= restarts, "resent: {t:?}");
    assert!(t.ok >= at_least, "only {} requests: {t:?}", t.ok);
    assert_eq!(t.bodies.len(), 1, "answers other than world-v2's: {t:?}");
    assert_eq!(
        t.bodies.get(&v2).and_then(|v| v.as_u64()),
        Some(t.ok),
        "{t:?}"
    );
}

/// Lets the client run through the current proxy for a while.
fn traffic(s: &Staging, for_requests: f64) {
    // After a takeover the old proxy's admin server may answer for a few
    // milliseconds more; its counts are not the new one's.
    std::thread::sleep(Duration::from_millis(100));
    let handled = |s: &Staging| counter(s, "sidetrack_requests_total");
    let before = handled(s);
    assert!(
        sidetrack_tests::eventually(10, || handled(s) >= before + for_requests),
        "the client's requests reach the proxy"
    );
}

#[test]
fn three_restarts_in_a_row_lose_no_request_and_route_every_one_by_the_dtab() {
    let mut s = start("restart3", Mode::Ebpf);
    let client = LoopClient::start(&s);
    traffic(&s, 100.0);
    let intercepted = |s: &Staging| counter(s, "sidetrack_ebpf_connect_intercepted_total");
    let mut seen = intercepted(&s);
    // The second successor runs with another log level patched into its
    // programs, so it swaps its own in; the third swaps them back.
    let runs: [&[(&str, &str)]; 3] = [&[], &[("RUST_LOG", "info,sidetrack=debug")], &[]];
    for (i, env) in runs.iter().enumerate() {
        let config = s.config();
        if let Err(e) = s.start_successor(&config, env).unwrap() {
            panic!("restart {}: the successor failed: {e}", i + 1);
        }
        traffic(&s, 100.0);
        // The kubelet deletes the old pod once the new one is ready: its
        // SIGTERM ends the old proxy, which had handed over and drained.
        for (status, log) in s.stop_retired(Duration::from_secs(15)).unwrap() {
            assert!(
                status.success(),
                "restart {}: old proxy {status}:\n{log}",
                i + 1
            );
            assert!(log.contains("handed over"), "{log}");
            assert!(
                !log.contains("interception off"),
                "the old proxy switched interception off:\n{log}"
            );
        }
        let log = s.proxy_log();
        let expected = if i == 0 {
            "keeping the running programs"
        } else {
            "our programs swapped in"
        };
        assert!(log.contains(expected), "restart {}: {log}", i + 1);
        traffic(&s, 50.0);
        if i == 1 {
            // Its programs run: they log at the level it patched in.
            let log = s.proxy_log();
            assert!(
                log.contains("sent to the proxy"),
                "no connect4 debug line:\n{log}"
            );
        }
        // The counters live in the maps the successor took over: they go
        // on from where they were.
        let now = intercepted(&s);
        assert!(
            now > seen,
            "restart {}: {now} connects intercepted, {seen} before",
            i + 1
        );
        seen = now;
    }
    let t = client.stop();
    eprintln!("loop client through three restarts: {t:?}");
    assert_all_routed(&s, &t, 300, 3);
    // A final stop with no successor is today's: interception off first,
    // then the drain, and the programs detach.
    let status = s.stop_proxy().unwrap();
    assert!(status.success(), "{status}:\n{}", s.proxy_log());
    assert!(
        s.proxy_log().contains("interception off"),
        "{}",
        s.proxy_log()
    );
    let out = s
        .curl(
            &format!("http://{}:{APP_PORT}/", s.world_v1.ip()),
            std::net::SocketAddrV4::new(s.world_v1.ip(), APP_PORT),
            &["Host: world", STAGE_V2],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("world ({})", s.world_v1.ip()),
        "after the last proxy stopped, connects go straight to the pod"
    );
}

#[test]
fn a_successor_that_fails_to_start_leaves_the_running_proxy_serving() {
    let mut s = start("restart-fail", Mode::Ebpf);
    let client = LoopClient::start(&s);
    traffic(&s, 100.0);
    let pid = s.proxy_pid();

    // A broken settings file: refused before the running proxy is asked.
    let bad = format!("{}limits:\n  max_connections: 0\n", s.config());
    let failed = s.start_successor(&bad, &[]).unwrap().unwrap_err();
    assert!(failed.contains("max_connections"), "{failed}");
    traffic(&s, 50.0);

    // Settings that do not fit the running data path (another mark): the
    // successor takes the descriptors, refuses, and goes before it says
    // ready; the running proxy serves on with interception on.
    let other_mark = s.config().replace(
        &format!("mark: {PROXY_MARK}"),
        &format!("mark: {}", PROXY_MARK + 1),
    );
    assert_ne!(other_mark, s.config());
    let failed = s.start_successor(&other_mark, &[]).unwrap().unwrap_err();
    assert!(failed.contains("does not fit"), "{failed}");
    traffic(&s, 50.0);
    assert_eq!(s.proxy_pid(), pid, "the first proxy still runs");
    assert!(s.proxy_running().unwrap());
    assert!(
        s.proxy_log().contains("did not take over"),
        "{}",
        s.proxy_log()
    );

    // And the running proxy can still be taken over after all that.
    let config = s.config();
    s.start_successor(&config, &[]).unwrap().unwrap();
    traffic(&s, 50.0);
    for (status, log) in s.stop_retired(Duration::from_secs(15)).unwrap() {
        assert!(status.success(), "{status}:\n{log}");
    }
    let t = client.stop();
    eprintln!("loop client through two failed starts and a restart: {t:?}");
    assert_all_routed(&s, &t, 250, 1);
    // Nothing was pinned: with the old proxy gone, the new one is the last
    // holder of the programs, and killed it still fails open.
    s.kill_proxy().unwrap();
    let direct = format!("world ({})", s.world_v1.ip());
    assert!(
        sidetrack_tests::eventually(5, || {
            s.curl(
                &format!("http://{}:{APP_PORT}/", s.world_v1.ip()),
                std::net::SocketAddrV4::new(s.world_v1.ip(), APP_PORT),
                &["Host: world", STAGE_V2],
            )
            .is_ok_and(|out| out == direct.as_bytes())
        }),
        "after SIGKILL, connects go straight to the pod"
    );
}

#[test]
fn iptables_mode_restarts_without_losing_a_request() {
    let mut s = start("restart-nft", Mode::Iptables);
    let client = LoopClient::start(&s);
    traffic(&s, 100.0);
    // The successor replaces the rules in one transaction; the old proxy
    // leaves them (and conntrack's NAT of what it still serves) alone.
    let config = s.config();
    if let Err(e) = s.start_successor(&config, &[]).unwrap() {
        panic!("the successor failed: {e}");
    }
    traffic(&s, 100.0);
    for (status, log) in s.stop_retired(Duration::from_secs(15)).unwrap() {
        assert!(status.success(), "{status}:\n{log}");
        assert!(!log.contains("rules removed"), "{log}");
    }
    traffic(&s, 50.0);
    let t = client.stop();
    eprintln!("loop client through a restart in iptables mode: {t:?}");
    assert_all_routed(&s, &t, 250, 1);
}
