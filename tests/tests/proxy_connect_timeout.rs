//! Root test: a backend that never answers a SYN. The backend is a pod of
//! the netns test bed whose namespace drops every SYN to one port (an
//! nftables rule that goes with the namespace), so the proxy's connect
//! hangs until `pool.connect_timeout_ms` ends it; meanwhile the proxy keeps
//! serving other requests on the same worker.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use sidetrack_tests::{
    TempDir,
    backend::Backend,
    client::{self, Response},
    proxy::Proxy,
    require_root,
};
use xtask::testbed::{Node, Pod};

const SILENT_PORT: u16 = 81;
const CONNECT_TIMEOUT_MS: u64 = 600;

/// Drops every SYN to `SILENT_PORT` in the pod's namespace.
fn drop_syns(pod: &Pod) {
    let rules = format!(
        "table inet silent {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
         tcp dport {SILENT_PORT} drop\n }}\n}}\n"
    );
    let mut nft = pod
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run nft in the pod (cargo xtask setup installs nftables)");
    nft.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft refused {rules:?}");
}

/// Whether a plain connect to `addr` is still pending after `wait`.
fn connect_hangs(addr: SocketAddr, wait: Duration) -> bool {
    match TcpStream::connect_timeout(&addr, wait) {
        Err(e) => e.kind() == std::io::ErrorKind::TimedOut,
        Ok(_) => false,
    }
}

#[test]
fn a_backend_that_never_answers_a_syn_times_out_while_others_are_served() {
    require_root();
    let mut node = Node::new("cto").expect("make a test bed node");
    let pod = node.add_pod("silent").expect("make a pod");
    let silent = SocketAddr::from((pod.ip(), SILENT_PORT));
    // Before the rule, nothing listens: the pod's kernel refuses at once.
    let refused = TcpStream::connect_timeout(&silent, Duration::from_secs(5))
        .expect_err("nothing listens on the silent port");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    drop_syns(&pod);
    assert!(
        connect_hangs(silent, Duration::from_millis(300)),
        "the pod still answers SYNs to {silent}"
    );

    let dir = TempDir::new("connect-timeout");
    let web = Backend::start("web");
    dir.write("web", &web.fs_line());
    dir.write("silent", &format!("{} {SILENT_PORT}\n", pod.ip()));
    let config = format!("pool:\n  connect_timeout_ms: {CONNECT_TIMEOUT_MS}\n");
    let proxy = Proxy::with_fs_namer(&dir, &config, &["--workers", "1"]);
    let addr = proxy.addr;

    // The request to the silent backend runs on its own thread.
    let (done_tx, done_rx) = mpsc::channel::<(Response, Duration)>();
    let waiting = thread::spawn(move || {
        let started = Instant::now();
        let r = client::get(addr, "silent", "/", &[]);
        let _ = done_tx.send((r, started.elapsed()));
    });
    // While its connect hangs, the same (only) worker serves others.
    thread::sleep(Duration::from_millis(50));
    let others_started = Instant::now();
    for _ in 0..20 {
        assert_eq!(client::get(addr, "web", "/", &[]).status, 200);
    }
    let others_took = others_started.elapsed();
    assert!(
        done_rx.try_recv().is_err(),
        "the silent backend's request ended before the others were served"
    );
    assert!(
        others_took < Duration::from_millis(CONNECT_TIMEOUT_MS),
        "20 requests to a live backend took {others_took:?} while one connect hung"
    );

    let (r, took) = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the silent backend's request never ended");
    waiting.join().unwrap();
    assert_eq!(r.status, 502, "{:?} {}", r.headers, r.text());
    let err = r.header("l5d-err").expect("l5d-err on the 502").to_owned();
    assert!(
        err.contains("timed out") && err.contains(&silent.to_string()),
        "l5d-err {err:?}"
    );
    assert!(
        took >= Duration::from_millis(CONNECT_TIMEOUT_MS - 50),
        "answered after {took:?}, before the connect timeout"
    );
    assert!(
        took < Duration::from_millis(CONNECT_TIMEOUT_MS) + Duration::from_secs(2),
        "answered after {took:?}, long after the connect timeout"
    );
    assert!(proxy.metric("sidetrack_errors_total", &[("kind", "connect_failed")]) >= 1.0);

    // A client connection left idle is still served afterwards.
    let answer = client::until_close(
        addr,
        "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(proxy);
    node.teardown().expect("tear the node down");
}
