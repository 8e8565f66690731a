//! The proxy as a process: metrics after a known sequence of requests, the
//! admin endpoints, and graceful shutdown on SIGTERM.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use sidetrack_tests::{
    TempDir,
    backend::Backend,
    client::{self, Client},
    proxy::{self, Proxy, metric_value},
};

#[test]
fn metrics_count_a_known_sequence_per_version() {
    let dir = TempDir::new("metrics");
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    dir.write("world-v1", &v1.fs_line());
    dir.write("world-v2", &v2.fs_line());
    let proxy = Proxy::start(&[
        "--dtab",
        "/svc/world => /#/io.l5d.fs/world-v1",
        "--fs-dir",
        dir.str(),
    ]);
    let mut c = Client::connect(proxy.addr);
    for _ in 0..7 {
        assert_eq!(c.get("world", "/", &[]).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            c.get(
                "world",
                "/",
                &["l5d-dtab: /svc/world => /#/io.l5d.fs/world-v2"]
            )
            .status,
            200
        );
    }
    assert_eq!(c.get("nowhere", "/", &[]).status, 502);
    c.send(b"GET /bytes/100000 HTTP/1.1\r\nHost: world\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response(false).unwrap().body.len(), 100_000);

    let m = proxy.metrics();
    let v1 = [
        ("service", "/svc/world"),
        ("dst", "/#/io.l5d.fs/world-v1"),
        ("override", "false"),
    ];
    let v2 = [
        ("service", "/svc/world"),
        ("dst", "/#/io.l5d.fs/world-v2"),
        ("override", "true"),
    ];
    assert_eq!(
        metric_value(&m, "sidetrack_requests_total", &v1),
        8.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "sidetrack_requests_total", &v2),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "sidetrack_responses_total",
            &[v1[0], v1[1], ("class", "2xx")]
        ),
        8.0
    );
    assert_eq!(
        metric_value(&m, "sidetrack_responses_total", &[v2[1], ("class", "2xx")]),
        3.0
    );
    // The last latency is recorded just after its body went out: wait for it.
    assert!(sidetrack_tests::eventually(5, || {
        proxy.metric("sidetrack_request_duration_seconds_count", &v1) == 8.0
    }));
    assert_eq!(
        metric_value(&m, "sidetrack_errors_total", &[("kind", "bind_neg")]),
        1.0
    );
    assert_eq!(metric_value(&m, "sidetrack_connections_total", &[]), 1.0);
    assert_eq!(metric_value(&m, "sidetrack_connections_active", &[]), 1.0);
    // 10 cache lookups hit after the first of each (v1, v2, nowhere, bytes)
    assert_eq!(
        metric_value(&m, "sidetrack_dtab_cache_misses_total", &[]),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "sidetrack_dtab_cache_hits_total", &[]),
        9.0,
        "{m}"
    );
    // Body bytes are counted once the body went out, like the latency:
    // the client can read the last byte first.
    assert!(
        sidetrack_tests::eventually(5, || {
            let m = proxy.metrics();
            let spliced = metric_value(&m, "sidetrack_body_bytes_total", &[("mode", "spliced")]);
            let copied = metric_value(&m, "sidetrack_body_bytes_total", &[("mode", "copied")]);
            spliced + copied >= 100_000.0
        }),
        "{}",
        proxy.metrics()
    );
}

#[test]
fn a_changed_config_file_applies_and_a_broken_one_is_refused() {
    let dir = TempDir::new("config");
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    dir.write("v1", &v1.fs_line());
    dir.write("v2", &v2.fs_line());
    let cfg = dir.path().join("sidetrack.yaml");
    let write_cfg = |dtab: &str| {
        dir.write(
            "sidetrack.yaml",
            &format!(
                "dtab: {dtab}\nfs_dir: {}\nwatch_interval_ms: 100\n",
                dir.str()
            ),
        )
    };
    write_cfg("/svc/web => /#/io.l5d.fs/v1");
    let mut cmd = std::process::Command::new(sidetrack_tests::proxy::binary());
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let proxy = Proxy::spawn(cmd);
    assert_eq!(
        client::get(proxy.addr, "web", "/", &[]).header("x-backend"),
        Some("v1")
    );
    write_cfg("/svc/web => /#/io.l5d.fs/v2");
    assert!(sidetrack_tests::eventually(10, || client::get(
        proxy.addr,
        "web",
        "/",
        &[]
    )
    .header("x-backend")
        == Some("v2")));
    dir.write("sidetrack.yaml", "dtab: [unclosed\n");
    assert!(sidetrack_tests::eventually(10, || proxy
        .logs
        .try_iter()
        .any(|l| l.contains("config reload refused"))));
    assert_eq!(
        client::get(proxy.addr, "web", "/", &[]).header("x-backend"),
        Some("v2"),
        "the old settings stay"
    );
    // A file caught half-written (truncated, still empty) is not "use the
    // defaults", which would drop the dtab and the namer.
    dir.write("sidetrack.yaml", "");
    assert!(sidetrack_tests::eventually(10, || proxy
        .logs
        .try_iter()
        .any(
            |l| l.contains("config reload refused") && l.contains("empty")
        )));
    // And a value that parses but cannot work is refused the same way.
    dir.write(
        "sidetrack.yaml",
        &format!(
            "dtab: /svc/web => /#/io.l5d.fs/v1\nfs_dir: {}\nwatch_interval_ms: 0\n",
            dir.str()
        ),
    );
    assert!(sidetrack_tests::eventually(10, || proxy
        .logs
        .try_iter()
        .any(
            |l| l.contains("config reload refused") && l.contains("spin")
        )));
    assert_eq!(
        client::get(proxy.addr, "web", "/", &[]).header("x-backend"),
        Some("v2"),
        "the old settings stay"
    );
}

#[test]
fn logs_can_be_json() {
    let mut cmd = std::process::Command::new(sidetrack_tests::proxy::binary());
    cmd.args([
        "--log-format",
        "json",
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--dtab",
        "/svc => /$/nil",
    ]);
    let proxy = Proxy::spawn(cmd);
    assert_eq!(client::get(proxy.addr, "x", "/", &[]).status, 503);
    proxy.terminate();
    let lines: Vec<String> = proxy.logs.iter().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

#[test]
fn admin_serves_ready_dtab_and_delegator_json() {
    let proxy = Proxy::start(&["--dtab", "/svc => /$/inet/127.0.0.1/9; /svc/b => /$/fail"]);
    assert_eq!(client::get(proxy.admin, "a", "/ready", &[]).status, 200);
    assert_eq!(
        client::get(proxy.admin, "a", "/dtab", &[]).text().trim(),
        "/svc=>/$/inet/127.0.0.1/9;/svc/b=>/$/fail"
    );
    let tree = client::get(
        proxy.admin,
        "a",
        "/delegator.json?path=%2Fsvc%2Fa&dtab=%2Fsvc%2Fa+%3D%3E+%2F%24%2Fnil",
        &[],
    )
    .json();
    assert_eq!(tree["path"], "/svc/a");
    let text = tree.to_string();
    assert!(text.contains("\"empty\""), "{text}");
    let mut c = Client::connect(proxy.admin);
    let body = r#"{"namespace":"default","dtab":"","path":"/svc/b/x"}"#;
    c.send(format!("POST /delegator.json HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes()).unwrap();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"fail\""), "{}", r.text());
    assert!(
        client::get(proxy.admin, "a", "/delegator", &[])
            .text()
            .contains("<title>Sidetrack delegator</title>")
    );
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let dir = TempDir::new("shutdown");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    let mut proxy = Proxy::start(&["--dtab", "/svc => /#/io.l5d.fs", "--fs-dir", dir.str()]);
    let addr = proxy.addr;
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("web", "/", &[]).status, 200);
    // Five requests in flight, each taking 600 ms at the backend (the time
    // is the whole rest of the path: `/slow/600?x` would not wait at all).
    // SIGTERM goes once the backend has all five, none answered yet.
    let before = web.requests.load(Ordering::Relaxed);
    let inflight: Vec<_> = (0..5)
        .map(|_| thread::spawn(move || client::get(addr, "web", "/slow/600", &[])))
        .collect();
    let arrived = || web.requests.load(Ordering::Relaxed) - before;
    assert!(
        sidetrack_tests::eventually(5, || arrived() == 5),
        "the backend got {} of the 5 requests",
        arrived()
    );
    assert!(inflight.iter().all(|t| !t.is_finished()));
    proxy.terminate();
    for t in inflight {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "an in-flight request was lost");
    }
    let status = proxy.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    // New connections are refused once it is gone.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// A draining proxy keeps an idle keep-alive connection open for
/// `shutdown_idle_ms`, so a request already on its way is served (and told
/// `Connection: close`) rather than met by a closed socket; a connection
/// that stays idle is closed when that is over.
#[test]
fn a_draining_proxy_serves_a_request_on_an_idle_connection_and_says_close() {
    let dir = TempDir::new("drain-idle");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    let mut proxy = Proxy::with_fs_namer(&dir, "shutdown_idle_ms: 2000\n", &[]);
    let addr = proxy.addr;
    let (mut late, mut quiet) = (Client::connect(addr), Client::connect(addr));
    for c in [&mut late, &mut quiet] {
        assert_eq!(c.get("web", "/", &[]).status, 200);
    }
    // Something in flight keeps the proxy draining.
    let slow = thread::spawn(move || client::get(addr, "web", "/slow/3000", &[]));
    assert!(sidetrack_tests::eventually(5, || proxy
        .metric("sidetrack_connections_active", &[])
        == 3.0));
    proxy.terminate();
    thread::sleep(Duration::from_millis(300));
    let r = late.get("web", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    assert!(
        late.read_to_end().unwrap().is_empty(),
        "and closed after it"
    );
    // The quiet one is closed once the grace is over.
    let started = std::time::Instant::now();
    assert!(quiet.read_to_end().unwrap().is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(slow.join().unwrap().status, 200);
    assert!(proxy.child.wait().unwrap().success());
}

/// Context switches (voluntary and not) of each of `pid`'s worker threads,
/// by thread id. A worker blocks and is woken for the connections it
/// serves; one that serves none sleeps on, and its counts stay put.
fn worker_switches(pid: u32) -> BTreeMap<String, u64> {
    proxy::worker_counts(
        pid,
        &["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"],
    )
}

#[test]
fn several_workers_share_the_port_and_drain_together() {
    const WORKERS: usize = 3;
    let dir = TempDir::new("workers");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    let mut proxy = Proxy::start(&[
        "--workers",
        &WORKERS.to_string(),
        "--dtab",
        "/svc => /#/io.l5d.fs",
        "--fs-dir",
        dir.str(),
    ]);
    let pid = proxy.child.id();
    // Every worker named and asleep: the same counts twice running.
    let mut before = BTreeMap::new();
    let settled = sidetrack_tests::eventually(5, || {
        let now = worker_switches(pid);
        let same = now.len() == WORKERS && now == before;
        before = now;
        same
    });
    assert!(settled, "{WORKERS} idle workers: {before:?}");
    // Connections spread over the workers' listeners; every one is served.
    // Each lands on a worker by its 4-tuple's hash: one that none of 60
    // reaches is a chance of 3 * (2/3)^60, about 1e-10.
    for i in 0..60 {
        let r = client::get(proxy.addr, "web", &format!("/{i}"), &[]);
        assert_eq!(r.status, 200);
    }
    assert_eq!(proxy.metric("sidetrack_connections_total", &[]), 60.0);
    // And every worker served some: each has woken since.
    let mut after = BTreeMap::new();
    let all_served = sidetrack_tests::eventually(5, || {
        after = worker_switches(pid);
        after.len() == WORKERS
            && after
                .iter()
                .all(|(tid, n)| before.get(tid).is_some_and(|b| b < n))
    });
    assert!(
        all_served,
        "a worker served no connection: context switches {before:?}, then {after:?}"
    );
    proxy.terminate();
    assert!(proxy.child.wait().unwrap().success());
}

#[test]
fn a_lingering_connection_does_not_hold_up_the_shutdown() {
    let dir = TempDir::new("linger-drain");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    let config = "limits:\n  linger_ms: 60000\nshutdown_grace_ms: 30000\n";
    let mut proxy = Proxy::with_fs_namer(&dir, config, &[]);
    // Refused while its body is on the way: the proxy answers, shuts its
    // side and lingers, reading what the client still sends.
    let (mut s, answer) = client::refused_upload(proxy.addr);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    thread::sleep(Duration::from_millis(100));
    s.write_all(&[b'x'; 10_000])
        .expect("still lingering: the proxy reads what comes");
    // A lingering connection is idle to the drain: the proxy exits without
    // waiting out the linger or the grace period.
    proxy.terminate();
    let asked = Instant::now();
    let status = proxy.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "exited {:?} after SIGTERM",
        asked.elapsed()
    );
}

/// `Cpus_allowed_list` of each of `pid`'s two worker threads, once both
/// have started their watchdog threads. A new thread bears its parent's
/// name until it names itself, so before that a watchdog may pass for a
/// worker, and a worker for the main thread.
fn two_workers_cpus(pid: u32) -> Vec<(String, String)> {
    let mut cpus = Vec::new();
    let settled = sidetrack_tests::eventually(5, || {
        cpus = threads_cpus(pid);
        let named = |prefix: &str| cpus.iter().filter(|(n, _)| n.starts_with(prefix)).count();
        named("sidetrack-worke") == 2 && named("sidetrack-watch") == 2
    });
    assert!(settled, "{cpus:?}");
    cpus.retain(|(n, _)| n.starts_with("sidetrack-worke"));
    cpus
}

/// The name and `Cpus_allowed_list` of each of `pid`'s threads.
fn threads_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = entry.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default();
        out.push((name.trim().to_owned(), cpus.trim().to_owned()));
    }
    out.sort();
    out
}

#[test]
fn pinned_workers_each_run_on_one_cpu_of_their_own() {
    let dir = TempDir::new("pin-workers");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    let all = std::thread::available_parallelism().unwrap().get();
    assert!(all >= 2, "this test needs two CPUs");
    let pinned = Proxy::with_fs_namer(&dir, "pin_workers: true\n", &["--workers", "2"]);
    let cpus = two_workers_cpus(pinned.child.id());
    assert!(
        cpus.iter().all(|(_, c)| c.parse::<usize>().is_ok()) && cpus[0].1 != cpus[1].1,
        "one CPU each, not the same: {cpus:?}"
    );
    for i in 0..10 {
        assert_eq!(
            client::get(pinned.addr, "web", &format!("/{i}"), &[]).status,
            200
        );
    }
    // Unpinned (the default), a worker may run anywhere the process may.
    let free = Proxy::with_fs_namer(&dir, "", &["--workers", "2"]);
    let cpus = two_workers_cpus(free.child.id());
    assert!(
        cpus.iter().all(|(_, c)| c.parse::<usize>().is_err()),
        "{cpus:?}"
    );
}

#[test]
fn a_connection_still_queued_at_sigterm_is_served_not_reset() {
    let dir = TempDir::new("queued-drain");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    let mut proxy = Proxy::with_fs_namer(&dir, "", &[]);
    let addr = proxy.addr;
    let pid = proxy.child.id() as i32;
    // A busy connection, and clients the kernel queues while the proxy is
    // stopped: when it resumes, the SIGTERM and the queued connections
    // are there together, and closing the listener would reset those:
    // the worker accepts some before it sees the stop, and the shutdown
    // takes the rest from the queue (which, varies from run to run).
    let busy = thread::spawn(move || client::get(addr, "web", "/slow/800", &[]));
    assert!(sidetrack_tests::eventually(5, || proxy
        .metric("sidetrack_connections_active", &[])
        == 1.0));
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut queued: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = Client::connect(addr);
            c.send(format!("GET /queued/{i} HTTP/1.1\r\nHost: web\r\n\r\n").as_bytes())
                .unwrap();
            c
        })
        .collect();
    proxy.terminate();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    for (i, c) in queued.iter_mut().enumerate() {
        let r = c
            .read_response(false)
            .expect("the queued connection is answered");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["target"], format!("/queued/{i}"));
    }
    assert_eq!(busy.join().unwrap().status, 200);
    let status = proxy.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(sidetrack_tests::proxy::binary());
    cmd.args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let proxy = Proxy::spawn(cmd);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.child.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&open_files[3..5], ["4096", "4096"], "{limits}");
    // 4096 is short of the default max_connections (10,000, two each).
    assert!(
        proxy
            .startup_logs
            .iter()
            .any(|l| l.contains("open-file limit is below")),
        "{:#?}",
        proxy.startup_logs
    );
}

/// A worker that stops on its own stops the proxy, with a failing status,
/// instead of leaving it ready with a listener nobody serves. The fault:
/// the cgroup allows one thread fewer than a running proxy has, so the
/// last one made, the worker's deadline sweeper, cannot be.
#[test]
fn a_worker_that_stops_on_its_own_stops_the_proxy() {
    use std::io::Read;
    sidetrack_tests::require_root();
    let cg = sidetrack_tests::cgroup::TestCgroup::with_pids("worker-dies").unwrap();
    let start = || {
        let mut cmd = std::process::Command::new(sidetrack_tests::proxy::binary());
        cmd.args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cg.spawn(&mut cmd).unwrap()
    };
    // Whole: how many threads a running proxy has.
    let mut whole = start();
    let mut threads = Vec::new();
    assert!(
        sidetrack_tests::eventually(10, || {
            threads = threads_cpus(whole.id());
            threads
                .iter()
                .any(|(n, _)| n.starts_with("sidetrack-watch"))
        }),
        "{threads:?}"
    );
    whole.kill().unwrap();
    whole.wait().unwrap();
    std::fs::write(cg.path().join("pids.max"), (threads.len() - 1).to_string()).unwrap();

    let mut short = start();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = short.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = short.kill();
            let _ = short.wait();
            panic!("the proxy kept running with its only worker gone");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut said = String::new();
    short
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("cannot start the deadline sweeper"), "{said}");
    assert!(said.contains("a worker stopped on its own"), "{said}");
}
