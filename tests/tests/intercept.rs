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
    APP_PORT, Bins, EXCLUDED_PORT, Mode, STAGE_V2, Staging, hello_service, metric, world_service,
};

fn bins() -> Bins {
    sidetrack_tests::proxy::staging_bins()
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

/// A dual-stack (AF_INET6) socket connecting to a service's v4-mapped
/// address (`::ffff:a.b.c.d`, what a JVM does for an IPv4 destination) is
/// steered like an AF_INET one: routed by the dtab, staged by its header,
/// and its bytes take the sk_msg shortcut both ways.
#[test]
fn ebpf_steers_dual_stack_sockets_that_connect_to_v4_mapped_addresses() {
    let s = start("ebpf-mapped", Mode::Ebpf);
    let counters = |s: &Staging| {
        [
            "sidetrack_ebpf_connect_intercepted_total",
            "sidetrack_ebpf_orig_dst_filed_total",
            "sidetrack_ebpf_msg_redirected_total",
        ]
        .map(|name| counter(s, name))
    };
    let before = counters(&s);
    let svc = hello_service();
    // curl makes an AF_INET6 socket for an IPv6 literal.
    let mapped = format!("[::ffff:{}]:{}", svc.ip(), svc.port());
    let get = |headers: &[&str]| {
        String::from_utf8(s.curl_to("http://hello/", &mapped, headers).unwrap()).unwrap()
    };
    assert_eq!(
        get(&[]),
        format!("Hello ({}) world ({})!!", s.hello.ip(), s.world_v1.ip())
    );
    assert_eq!(
        get(&[STAGE_V2]),
        format!("Hello ({}) earth ({})!!", s.hello.ip(), s.world_v2.ip())
    );
    let after = counters(&s);
    // Two requests, each a client->hello connect (connect6) and a
    // hello->world one (connect4).
    assert_eq!(after[0] - before[0], 4.0, "connects intercepted");
    assert_eq!(after[1] - before[1], 4.0, "original destinations filed");
    // Each request is at least eight messages (client, hello and world to
    // the proxy and back), all shortcut; were the dual-stack socket out of
    // the SOCKHASH, its two would go the normal way (12 in all).
    assert!(
        after[2] - before[2] >= 16.0,
        "only {} messages redirected",
        after[2] - before[2]
    );

    // A native IPv6 destination is left alone, even one whose last 32 bits
    // spell an intercepted IPv4 address (the service's): an echo server on
    // such an address in the client pod itself answers the client directly.
    let o = svc.ip().octets();
    let native = format!(
        "fd00::{:x}:{:x}",
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]])
    );
    for args in [
        vec!["link", "set", "lo", "up"],
        vec![
            "-6",
            "addr",
            "add",
            &format!("{native}/128"),
            "dev",
            "lo",
            "nodad",
        ],
    ] {
        let out = s.client.command("ip").args(&args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    let (_server, mut lines, addr) = echo_server_on(&s.client, &native);
    let before = counters(&s);
    let n = 1000;
    let out = echo_client(&s, "send", &addr, n);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said} {out:?}");
    let want = format!("echoed {n} {:016x}", Fnv64::of(&pattern(n)));
    assert!(said.starts_with(&want), "{said}");
    let peer = lines.next().unwrap().unwrap();
    assert!(peer.starts_with(&format!("peer [{native}]:")), "{peer}");
    assert_eq!(
        counters(&s)[0],
        before[0],
        "a native IPv6 connect was intercepted"
    );
}

#[test]
fn ebpf_redirects_large_bodies_byte_exact() {
    let s = start("ebpf-bytes", Mode::Ebpf);
    let bytes = |s: &Staging| {
        [
            "sidetrack_ebpf_bytes_redirected_total",
            "sidetrack_ebpf_bytes_passed_total",
        ]
        .map(|name| counter(s, name))
    };
    let before = bytes(&s);
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
    let after = bytes(&s);
    let (redirected, passed) = (after[0] - before[0], after[1] - before[1]);
    // Pod to proxy and proxy to client, through sk_msg: skipping the stack,
    // except while curl lagged more than its queue bound (4 MiB) behind
    // the proxy's writes, when they went the TCP way.
    eprintln!("{redirected} bytes redirected, {passed} passed");
    assert!(
        redirected + passed >= 2.0 * n as f64,
        "{redirected} bytes redirected and {passed} passed for a {n}-byte body"
    );
    assert!(
        redirected >= n as f64 / 2.0,
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
    // A client that talks to the proxy itself, not through the rules, with
    // bytes that are not HTTP: refused, not tunnelled to the proxy's own
    // address (which conntrack names as its original destination).
    let answer = sidetrack_tests::client::until_close(
        std::net::SocketAddr::V4(s.proxy_addr),
        "\x16\x03\x01 not http\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(counter(&s, "sidetrack_opaque_connections_total"), 0.0);
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

/// `sidetrack run --intercept ebpf --listen LISTEN --admin 127.0.0.1:0 EXTRA...`
/// that is expected to refuse to start: its exit code and stderr.
fn refused_run(listen: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(sidetrack_tests::proxy::binary())
        .args([
            "run",
            "--intercept",
            "ebpf",
            "--listen",
            listen,
            "--admin",
            "127.0.0.1:0",
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn interception_needs_a_node_address_and_root_checks_are_clear() {
    require_root();
    // eBPF mode on 0.0.0.0 cannot tell where to send connects.
    let (code, stderr) = refused_run("0.0.0.0:0", &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("node's own IPv4 address"), "{stderr}");
    // A cgroup that is not one is refused with its path named.
    let cfg = std::env::temp_dir().join(format!("sidetrack-badcg-{}.yaml", std::process::id()));
    std::fs::write(&cfg, "interception:\n  cgroup: /tmp\n").unwrap();
    let (code, stderr) = refused_run("127.0.0.1:0", &["--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_file(&cfg);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("/tmp is not a cgroup v2 directory"),
        "{stderr}"
    );
}

#[test]
fn an_address_for_a_host_is_named_by_the_original_destination() {
    let s = start("ebpf-ident", Mode::Ebpf);
    // Host is the service address itself: the name falls back to the
    // original destination, /svc/198.19.0.2:80, which the file namer knows.
    let svc = world_service();
    std::fs::write(
        s.dir.join("disco").join(svc.to_string()),
        format!("{} {APP_PORT}\n", s.world_v2.ip()),
    )
    .unwrap();
    let url = format!("http://{}:{}/", svc.ip(), svc.port());
    // The file namer reads the new file at its next look (every 200 ms).
    let mut body = Vec::new();
    assert!(sidetrack_tests::eventually(10, || {
        match s.curl(&url, svc, &[]) {
            Ok(b) => {
                body = b;
                true
            }
            Err(_) => false,
        }
    }));
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("earth ({})", s.world_v2.ip())
    );
    let m = s.metrics().unwrap();
    assert_eq!(
        metric(
            &m,
            "sidetrack_requests_total",
            &[("service", &format!("/svc/{svc}"))]
        ),
        1.0,
        "{m}"
    );
}

fn echo_bin() -> std::path::PathBuf {
    sidetrack_tests::proxy::binary()
        .parent()
        .unwrap()
        .join("netns-echo")
}

/// `netns-echo MODE ADDR N` (`send` or `send-close`) in the client pod.
fn echo_client(s: &Staging, mode: &str, addr: &str, n: usize) -> std::process::Output {
    s.client
        .command(echo_bin())
        .args([mode, addr, &n.to_string()])
        .output()
        .unwrap()
}

/// `netns-echo serve` on world-v1's (intercepted) address, any port: the
/// server (killed when dropped), its output lines after the first, and the
/// address it listens on.
fn echo_server(s: &Staging) -> (KillOnDrop, EchoLines, String) {
    echo_server_on(&s.world_v1, &s.world_v1.ip().to_string())
}

type EchoLines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// `netns-echo serve` in `pod` on `ip`, any port (see [`echo_server`]).
fn echo_server_on(pod: &xtask::testbed::Pod, ip: &str) -> (KillOnDrop, EchoLines, String) {
    use std::io::{BufRead, BufReader};
    let mut server = pod.command(echo_bin());
    server
        .args(["serve", ip])
        .stdout(std::process::Stdio::piped());
    let mut server = KillOnDrop(server.spawn().unwrap());
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let addr = listening
        .strip_prefix("listening ")
        .expect("listening line")
        .to_owned();
    (server, lines, addr)
}

#[test]
fn a_connection_that_is_not_http_is_tunnelled_to_its_destination() {
    let s = start("ebpf-opaque", Mode::Ebpf);
    let (server, mut lines, addr) = echo_server(&s);
    let n = 200_000;
    let out = echo_client(&s, "send", &addr, n);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    drop(server);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("echoed {n} {:016x}", Fnv64::of(&pattern(n)));
    assert!(said.starts_with(&want), "{said}");
    // It went through the proxy: the server saw the node's address.
    let peer = lines.next().unwrap().unwrap();
    assert!(
        peer.starts_with(&format!("peer {}:", s.proxy_addr.ip())),
        "{peer}"
    );
    assert_eq!(counter(&s, "sidetrack_opaque_connections_total"), 1.0);
}

/// A server-first protocol (SMTP, MySQL: the server speaks before the
/// client) on an intercepted port that is not listed as opaque: the client
/// waits for the banner, and the proxy, hearing nothing within the
/// detection timeout, tunnels the connection to its destination. Without
/// detection it would wait for a request head until the first-byte timeout
/// and close.
#[test]
fn ebpf_a_server_first_protocol_is_tunnelled_after_the_detection_timeout() {
    let s = start("ebpf-server-first", Mode::Ebpf);
    let mut server = s.world_v1.command(echo_bin());
    server
        .args(["serve-first", &s.world_v1.ip().to_string()])
        .stdout(std::process::Stdio::piped());
    let mut server = KillOnDrop(server.spawn().unwrap());
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(server.0.stdout.take().unwrap()));
    let addr = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("listening ")
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let out = echo_client_args(&s, &["banner", &addr]);
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        said.trim(),
        format!("banner 220 {addr} ready then QUIT"),
        "{}",
        s.proxy_log()
    );
    // The detection timeout (300 ms), not the first-byte timeout (5 s).
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Through the proxy: the server saw the node's address.
    let peer = lines.next().unwrap().unwrap();
    assert!(
        peer.starts_with(&format!("peer {}:", s.proxy_addr.ip())),
        "{peer}"
    );
    assert_eq!(counter(&s, "sidetrack_opaque_connections_total"), 1.0);
    drop(server);
}

/// `netns-echo ARGS` in the client pod.
fn echo_client_args(s: &Staging, args: &[&str]) -> std::process::Output {
    s.client.command(echo_bin()).args(args).output().unwrap()
}

/// Entries in the running proxy's ORIG_DST map: found among the maps its
/// descriptors hold (`map_id` in their fdinfo), read with `bpftool`.
fn orig_dst_entries(s: &Staging) -> usize {
    let bpftool = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool").args(args).output().unwrap();
        assert!(out.status.success(), "bpftool {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let pid = s.proxy_pid().expect("the proxy runs");
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        let is_map =
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_str() == Some("anon_inode:bpf-map"));
        if !is_map {
            continue;
        }
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().display()))
                .unwrap();
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")) else {
            continue;
        };
        let id = id.trim();
        if bpftool(&["-j", "map", "show", "id", id])["name"] == "ORIG_DST" {
            return bpftool(&["-j", "map", "dump", "id", id])
                .as_array()
                .unwrap()
                .len();
        }
    }
    panic!("the proxy (pid {pid}) holds no ORIG_DST map")
}

/// SIGCONT to the proxy when dropped, also on a failed test.
struct Resume<'a>(&'a Staging);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal_proxy(libc::SIGCONT);
    }
}

#[test]
fn ebpf_a_connection_closed_before_the_proxy_accepts_it_still_reaches_its_destination() {
    let s = start("ebpf-early-close", Mode::Ebpf);
    let (_server, lines, addr) = echo_server(&s);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The proxy stopped: the kernel completes handshakes and queues the
    // connections, and nobody accepts them.
    s.signal_proxy(libc::SIGSTOP).unwrap();
    let resume = Resume(&s);
    let n = 1000;
    let out = echo_client(&s, "send-close", &addr, n);
    assert!(out.status.success(), "{out:?}");
    // The client's end is gone too: its FIN acknowledged, it left
    // FIN-WAIT-1 and closed (an orphan goes straight to TIME-WAIT).
    let client_gone = || {
        let ss = s
            .client
            .command("ss")
            .args(["-Htn", "state", "fin-wait-1"])
            .output()
            .unwrap();
        ss.stdout.is_empty()
    };
    assert!(
        sidetrack_tests::eventually(5, client_gone),
        "the client's end stayed in FIN-WAIT-1"
    );
    drop(resume);
    // The proxy takes the queued connection, finds where it was going, and
    // tunnels its bytes there.
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("the server saw nothing more:\n{}", s.proxy_log()))
    };
    let peer = next();
    assert!(
        peer.starts_with(&format!("peer {}:", s.proxy_addr.ip())),
        "{peer}"
    );
    let closed = next();
    let want = format!(" {n} {:016x}", Fnv64::of(&pattern(n)));
    assert!(closed.ends_with(&want), "{closed}, want ...{want}");
    assert_eq!(counter(&s, "sidetrack_opaque_connections_total"), 1.0);
    // The proxy took its entry out of the map when it accepted it, before
    // it connected to the server.
    assert_eq!(orig_dst_entries(&s), 0, "ORIG_DST keeps an entry");
}

/// A child process killed (and reaped) when dropped, also on a failed test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM while a connection is still at work: interception goes off
/// before the listener closes, so a new connect on the node reaches its
/// destination (it is not refused) while the proxy drains.
/// Returns the staging with the proxy draining, and the tunnel's client, which
/// holds the drain until it is dropped.
fn shutdown_hands_new_connections_back(mode: Mode, tag: &str) -> (Staging, KillOnDrop) {
    let mut s = start(tag, mode);
    let v1 = s.world_v1.ip();
    // The work in flight: a connection that is not HTTP, tunnelled to the
    // pod and kept open (a download would not do: in eBPF mode the proxy
    // hands a whole 64 MiB response to a slow reader's socket at once).
    // The world app answers the garbage as a request; once that answer is
    // in the file, the tunnel is up.
    let got = s.dir.join("tunnel");
    let mut open = s.client.command("bash");
    open.arg("-c").arg(format!(
        "exec 3<>/dev/tcp/{v1}/{APP_PORT} && printf '\\026\\003 not http\\r\\n\\r\\n' >&3 \\
         && read -r line <&3 && echo \"$line\" > {} && exec sleep 60",
        got.display()
    ));
    let holder = KillOnDrop(open.spawn().unwrap());
    assert!(
        sidetrack_tests::eventually(10, || std::fs::read_to_string(&got)
            .is_ok_and(|l| l.starts_with("HTTP/1.1 200"))),
        "the tunnel is up"
    );
    assert_eq!(counter(&s, "sidetrack_opaque_connections_total"), 1.0);
    let filed = |s: &Staging| counter(s, "sidetrack_ebpf_sockhash_added_total");
    let filed_before = filed(&s);
    s.signal_proxy(libc::SIGTERM).unwrap();
    // Interception goes off first (a connect that raced the signal would
    // still be steered, and filed): wait for the proxy to say so.
    assert!(
        sidetrack_tests::eventually(10, || s.proxy_log().contains("interception off")),
        "{}",
        s.proxy_log()
    );
    // A fresh connect, until one works (bounded); the proxy must still be
    // draining when it does.
    let started = Instant::now();
    let mut answer = None;
    for _ in 0..30 {
        if let Ok(out) = s.curl(
            &format!("http://{v1}:{APP_PORT}/"),
            SocketAddrV4::new(v1, APP_PORT),
            &["Host: world"],
        ) {
            answer = Some(String::from_utf8(out).unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        answer.as_deref(),
        Some(format!("world ({v1})").as_str()),
        "a new connection during the drain reached the pod (after {:?}):\n{}",
        started.elapsed(),
        s.proxy_log()
    );
    assert!(
        s.proxy_running().unwrap(),
        "still draining the tunnel:\n{}",
        s.proxy_log()
    );
    assert!(
        s.proxy_log().contains("interception off"),
        "{}",
        s.proxy_log()
    );
    // That pod-to-pod connection is none of the proxy's: sockops still
    // leaves it out of the SOCKHASH (whose redirected bytes would be lost
    // when the map goes with the proxy). One socket is filed: the admin
    // server's end of this very metrics read (the proxy's own address).
    if matches!(mode, Mode::Ebpf) {
        assert_eq!(
            filed(&s) - filed_before,
            1.0,
            "sockets filed during the drain"
        );
    }
    (s, holder)
}

#[test]
fn ebpf_shutdown_switches_interception_off_first_and_a_second_signal_forces_exit() {
    let (mut s, _holder) = shutdown_hands_new_connections_back(Mode::Ebpf, "ebpf-drain");
    // The tunnel still holds the drain (grace: 10 s); a second SIGTERM
    // ends it now, with exit code 1 (not drained).
    let second = Instant::now();
    s.signal_proxy(libc::SIGTERM).unwrap();
    let status = s.wait_proxy(Duration::from_secs(5)).unwrap();
    assert_eq!(status.code(), Some(1), "{status}:\n{}", s.proxy_log());
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "{:?}",
        second.elapsed()
    );
    // The programs went with it: new connects are not steered.
    assert_eq!(
        get_pod(&s, s.world_v1.ip(), APP_PORT, "world"),
        format!("world ({})", s.world_v1.ip())
    );
}

#[test]
fn iptables_shutdown_switches_interception_off_first_then_drains_and_exits_0() {
    let (mut s, holder) = shutdown_hands_new_connections_back(Mode::Iptables, "nft-drain");
    let table = format!(
        "sidetrack_{}_{}",
        s.proxy_addr.ip().to_string().replace('.', "_"),
        s.proxy_addr.port()
    );
    assert!(
        nft_tables().contains(&table),
        "the table stays while draining"
    );
    // The tunnel ends; so does the drain, well within the grace.
    drop(holder);
    let status = s.wait_proxy(Duration::from_secs(8)).unwrap();
    assert!(status.success(), "{status}:\n{}", s.proxy_log());
    assert!(!nft_tables().contains(&table), "rules removed on exit");
}

/// Versions per customer and plan on the test bed, apps unaware: routing
/// rules (reloaded live into the running proxy) send 1,000 requests each
/// from two customers and two plans to their versions; an override to the
/// node's admin port is refused under the default policy.
#[test]
fn ebpf_rules_route_customers_and_plans_and_overrides_cannot_reach_the_node() {
    let mut s = start("ebpf-rules", Mode::Ebpf);
    s.reconfigure(
        "rules:\n\
         - name: acme-beta\n  match: {headers: [{name: x-customer, exact: acme}]}\n  \
           dtab: /host/world => /srv/world-v2\n\
         - name: free-plan\n  match: {cookies: [{name: plan, exact: free}]}\n  \
           dtab: /host/world => /srv/world-v2\n",
    )
    .unwrap();
    let world = world_service();
    let acme = ["x-customer: acme", "cookie: plan=paid"];
    assert!(
        sidetrack_tests::eventually(10, || s
            .curl("http://world/", world, &acme)
            .is_ok_and(|b| b.starts_with(b"earth"))),
        "the rules did not load:\n{}",
        s.proxy_log()
    );
    let cases: [(&[&str], &str); 4] = [
        (&acme, "earth"),
        (&["x-customer: globex", "cookie: plan=free"], "earth"),
        (&["x-customer: globex", "cookie: plan=paid"], "world"),
        (&["x-customer: initech"], "world"),
    ];
    for (headers, want) in cases {
        // 1,000 requests on one connection (curl's URL range).
        let body = s.curl("http://world/[1-1000]", world, headers).unwrap();
        let text = String::from_utf8_lossy(&body);
        let count = |word: &str| text.matches(&format!("{word} (")).count();
        assert_eq!(count(want), 1_000, "{headers:?}: {text:.200}");
        assert_eq!(count("earth") + count("world"), 1_000, "{headers:?}");
    }
    let m = s.metrics().unwrap();
    assert!(metric(&m, "sidetrack_requests_total", &[("rule", "acme-beta")]) >= 1_000.0);
    assert!(metric(&m, "sidetrack_requests_total", &[("rule", "free-plan")]) >= 1_000.0);

    // The admin port, one header away: refused, with the rule that says so.
    let ssrf = format!(
        "l5d-dtab: /host/hello => /$/inet/{}/{}",
        s.admin_addr.ip(),
        s.admin_addr.port()
    );
    let refused = s.get_hello(&[&ssrf]).unwrap_err().to_string();
    assert!(
        refused.contains("403") && refused.contains("denied_destinations"),
        "{refused}"
    );
}

/// TCP's pages in use on the machine (`/proc/net/sockstat`, the `mem` of
/// the `TCP:` line; one count for every network namespace).
fn tcp_mem_pages() -> u64 {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let mut words = tcp.split_whitespace();
    words.find(|w| *w == "mem").unwrap();
    words.next().unwrap().parse().unwrap()
}

/// How much a flood may have in flight to a receiver that never reads: on
/// each of its two redirecting hops, the receiver's ingress queue bound
/// (4 MiB, plus the message that crossed it) and what TCP holds once the
/// hop goes its way (the sender's send buffer, up to tcp_wmem's 4 MiB,
/// and the receiver's window); the proxy's own buffers are a few KiB.
/// Seen: 8.4 MiB sent, TCP memory 8.1 MiB up (unbounded: all 96 MiB).
const FLOOD_HELD_MAX: u64 = 24 << 20;

/// A pod sends as fast as it can, through the proxy, to a pod that never
/// reads. sk_msg's redirects never block a sender, so without a bound the
/// receiver's ingress queue took everything: all 96 MiB in 1.3 s, every
/// byte of it kernel memory (with `redirect_queue_min_bytes: 0`). With the
/// bound each redirecting hop (the proxy's to the receiver, then the
/// client's to the proxy, once the proxy stops reading) stops at its
/// receiver's limit and goes the normal TCP way, whose window stops the
/// sender. Once the receiver reads, every byte arrives in order, across
/// both switches (to the TCP path and back to redirects).
#[test]
fn ebpf_a_receiver_that_never_reads_stops_its_sender() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::mpsc;

    const FLOOD: usize = 96 << 20;
    let s = start("ebpf-flood", Mode::Ebpf);
    let mut sink = s.world_v1.command(echo_bin());
    sink.args(["sink", &s.world_v1.ip().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut sink = KillOnDrop(sink.spawn().unwrap());
    let mut sink_lines = BufReader::new(sink.0.stdout.take().unwrap()).lines();
    let listening = sink_lines.next().unwrap().unwrap();
    let addr = listening.strip_prefix("listening ").unwrap().to_owned();

    let pages_before = tcp_mem_pages();
    let mut flood = s.client.command(echo_bin());
    flood
        .args(["flood", &addr, &FLOOD.to_string()])
        .stdout(std::process::Stdio::piped());
    let mut flood = KillOnDrop(flood.spawn().unwrap());
    let (tx, progress) = mpsc::channel();
    let out = BufReader::new(flood.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    // Until the sender has sent nothing for a second (or is done): at most
    // 20 s. The most of TCP's pages seen meanwhile.
    let (mut sent, mut moved, mut peak) = (0u64, Instant::now(), 0u64);
    let started = Instant::now();
    let (mut done, mut timeline, mut next_sample) = (false, String::new(), Duration::ZERO);
    while moved.elapsed() < Duration::from_secs(1) && started.elapsed() < Duration::from_secs(20) {
        let grown = tcp_mem_pages().saturating_sub(pages_before);
        peak = peak.max(grown);
        if started.elapsed() >= next_sample {
            timeline += &format!(
                " {:.2}s:{}KiB/{}KiB",
                started.elapsed().as_secs_f64(),
                sent >> 10,
                grown * 4
            );
            next_sample += Duration::from_millis(250);
        }
        match progress.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                let (word, n) = line.split_once(' ').unwrap();
                let n: u64 = n.parse().unwrap();
                if n > sent {
                    (sent, moved) = (n, Instant::now());
                }
                if word == "done" {
                    done = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the flood ended: {sent} sent"),
        }
    }
    let m = s.metrics().unwrap();
    let full = metric(&m, "sidetrack_ebpf_msg_passed_queue_full_total", &[]);
    let redirected = metric(&m, "sidetrack_ebpf_bytes_redirected_total", &[]);
    eprintln!(
        "flood: {} KiB sent before the sender stopped; TCP memory grew by at most {} KiB; \
         {full} messages met a full queue\n(time: sent/TCP memory grown){timeline}",
        sent >> 10,
        peak * 4
    );
    assert!(
        !done,
        "all {FLOOD} bytes went into a receiver that reads nothing"
    );
    // It got as far as a full queue, at least, and no further than the
    // bounds allow.
    assert!(sent >= 4 << 20, "only {sent} bytes sent");
    assert!(
        sent < FLOOD_HELD_MAX,
        "{sent} bytes sent to a receiver that reads nothing"
    );
    assert!(
        peak * 4096 < FLOOD_HELD_MAX,
        "TCP memory grew by {} KiB",
        peak * 4
    );
    assert!(full >= 2.0, "{m}");

    // The receiver reads: the rest flows, byte-exact and in order across
    // each connection's switch from redirects to the TCP path.
    writeln!(sink.0.stdin.as_mut().unwrap(), "read").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = progress
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| panic!("the flood did not finish ({e}):\n{}", s.proxy_log()));
        if line.starts_with("done ") {
            assert_eq!(line, format!("done {FLOOD}"));
            break;
        }
    }
    // Once the receiver had read what went the TCP way, the shortcut came
    // back.
    let m = s.metrics().unwrap();
    let again = metric(&m, "sidetrack_ebpf_bytes_redirected_total", &[]) - redirected;
    eprintln!(
        "then: {} KiB redirected, {} messages passed in order behind the TCP path",
        again as u64 >> 10,
        metric(&m, "sidetrack_ebpf_msg_passed_in_order_total", &[])
    );
    assert!(again > (FLOOD / 4) as f64, "{m}");
    let _peer = sink_lines.next().unwrap().unwrap();
    let closed = sink_lines.next().unwrap().unwrap();
    let mut want = Fnv64::new();
    let (mut pattern, mut chunk) = (sidetrack_tests::Pattern::default(), vec![0u8; 1 << 20]);
    for _ in 0..FLOOD / chunk.len() {
        pattern.fill(&mut chunk);
        want.update(&chunk);
    }
    let want = format!(" {FLOOD} {:016x}", want.finish());
    assert!(closed.ends_with(&want), "{closed}, want ...{want}");
}

/// Shadowing on the eBPF test bed: an app that knows nothing of the proxy
/// calls world; a tenth of its requests are copied to world-v2 (the dtab
/// path bound by the same namer), in a binomial band, every live answer
/// still world-v1's, every copy answered.
#[test]
fn ebpf_mirrors_copy_a_share_of_live_traffic_to_a_candidate() {
    let mut s = start("ebpf-mirror", Mode::Ebpf);
    s.reconfigure("mirrors:\n  - {name: /svc/world, to: /srv/world-v2, percent: 10}\n")
        .unwrap();
    let world = world_service();
    let answered = |s: &Staging| {
        metric(
            &s.metrics().unwrap(),
            "sidetrack_mirror_requests_total",
            &[("target", "/srv/world-v2"), ("outcome", "answered")],
        )
    };
    // Loaded once a copy has been answered.
    assert!(
        sidetrack_tests::eventually(10, || {
            s.curl("http://world/[1-50]", world, &[]).is_ok() && answered(&s) > 0.0
        }),
        "the mirror did not load:\n{}",
        s.proxy_log()
    );
    let settled = |s: &Staging| {
        let mut last = answered(s);
        sidetrack_tests::eventually(10, || {
            std::thread::sleep(Duration::from_millis(300));
            let now = answered(s);
            std::mem::replace(&mut last, now) == now
        });
        last
    };
    let before = settled(&s);
    let body = s.curl("http://world/[1-2000]", world, &[]).unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("world (").count(), 2_000, "{text:.200}");
    assert_eq!(text.matches("earth (").count(), 0);
    let copies = settled(&s) - before;
    // Binomial(2,000, 0.1): 200 ± 13.4; six deviations either way.
    assert!(
        (120.0..=280.0).contains(&copies),
        "{copies} copies of 2,000"
    );
    let m = s.metrics().unwrap();
    for outcome in ["failed", "timeout", "dropped"] {
        assert_eq!(
            metric(
                &m,
                "sidetrack_mirror_requests_total",
                &[("target", "/srv/world-v2"), ("outcome", outcome)]
            ),
            0.0,
            "{outcome}"
        );
    }
    // The copies' own route metrics: world-v2, labelled as a mirror's.
    assert!(
        metric(
            &m,
            "sidetrack_requests_total",
            &[("dst", "/#/io.l5d.fs/world-v2"), ("rule", "(mirror)")]
        ) >= copies
    );
}

/// A host-network pod (a process in the pods' cgroup but in the node's
/// network namespace) calling an intercepted address goes straight there,
/// as the node's own processes do; a pod calling the same address is
/// intercepted.
#[test]
fn ebpf_host_network_pods_are_not_intercepted() {
    let s = start("ebpf-hostnet", Mode::Ebpf);
    let dir = s.node.cgroup_path().join("hostnet");
    std::fs::create_dir(&dir).unwrap();
    struct Rmdir(std::path::PathBuf);
    impl Drop for Rmdir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rmdir = Rmdir(dir.clone());
    let c = |name: &str| counter(&s, &format!("sidetrack_ebpf_{name}_total"));
    let (intercepted, host) = (c("connect_intercepted"), c("connect_host_network"));
    // world-v1's pod address is intercepted; its app calls nothing.
    let url = format!("http://{}:{APP_PORT}/", s.world_v1.ip());
    let mut curl = Command::new("curl");
    curl.args([
        "--silent",
        "--show-error",
        "--max-time",
        "5",
        "-H",
        "Host: world",
        &url,
    ]);
    xtask::staging::node_process(&mut curl, &dir).unwrap();
    let out = curl.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("world ("));
    assert_eq!(c("connect_intercepted"), intercepted, "{}", s.proxy_log());
    assert_eq!(c("connect_host_network"), host + 1.0);
    // /ready says what interception took.
    let (status, ready) =
        xtask::staging::http_get(std::net::SocketAddr::V4(s.admin_addr), "/ready").unwrap();
    assert_eq!(status, 200);
    let cgroup = format!("cgroup: {}\n", s.node.cgroup_path().display());
    assert!(ready.starts_with("ready\nintercept: ebpf\n"), "{ready}");
    assert!(ready.contains(&cgroup), "{ready}");
    assert!(ready.contains("host network: left alone"), "{ready}");
    // The same call from a pod is intercepted.
    let said = get_pod(&s, s.world_v1.ip(), APP_PORT, "world");
    assert!(said.starts_with("world ("), "{said}");
    assert_eq!(c("connect_intercepted"), intercepted + 1.0);
}

/// gRPC (HTTP/2 with prior knowledge) from an unaware app in eBPF mode:
/// the connect is steered, the preface detected on the intercepted
/// connection, every kind of call passes through the sk_msg shortcut, and
/// one call of the connection's ten carries an `l5d-dtab` that stages it
/// alone onto grpc-v2.
#[test]
fn ebpf_grpc_calls_are_routed_and_staged_per_call() {
    use sidetrack_tests::grpc::{self, GrpcServer};
    let s = start("ebpf-grpc", Mode::Ebpf);
    let port = 9095;
    let any = std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let disco = s.dir.join("disco");
    for (name, pod) in [
        ("grpc", &s.world_v1),
        ("grpc-v1", &s.world_v1),
        ("grpc-v2", &s.world_v2),
    ] {
        std::fs::write(disco.join(name), format!("{} {port}\n", pod.ip())).unwrap();
    }
    // After the namer files, which the namer reads within its interval
    // (200 ms) while the servers start (a second).
    let _v1 = GrpcServer::spawn("grpc-v1", any, s.world_v1.command(grpc::python()));
    let _v2 = GrpcServer::spawn("grpc-v2", any, s.world_v2.command(grpc::python()));
    // The service address nothing owns: only interception gets there.
    let target = std::net::SocketAddr::V4(world_service());
    let call = |scenario: &str, arg: &str| {
        let mut cmd = s.client.command(grpc::python());
        grpc::with_call_args(&mut cmd, target, "grpc", scenario, arg);
        grpc::answer(
            cmd.output().expect("run the gRPC client in the client pod"),
            scenario,
        )
    };
    let out = call("kinds", "");
    assert_eq!(out["unary"]["server"], "grpc-v1", "{out}");
    assert_eq!(out["unary"]["dst_service"], "/svc/grpc");
    assert_eq!(out["server_stream"].as_array().unwrap().len(), 5, "{out}");
    assert_eq!(out["client_stream"], "grpc-v1 7 7000");
    assert_eq!(out["bidi"].as_array().unwrap().len(), 3, "{out}");
    let out = call("stage", "10,/host/grpc => /srv/grpc-v2");
    let servers: Vec<_> = out["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["server"].as_str().unwrap().to_owned())
        .collect();
    let mut want = vec!["grpc-v1".to_owned(); 10];
    want[5] = "grpc-v2".into();
    assert_eq!(servers, want);
    let m = s.metrics().unwrap();
    assert_eq!(
        metric(&m, "sidetrack_http2_connections_total", &[]),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "sidetrack_requests_total",
            &[("dst", "/#/io.l5d.fs/grpc-v2"), ("override", "true")]
        ),
        1.0,
        "{m}"
    );
    assert!(counter(&s, "sidetrack_ebpf_msg_redirected_total") > 0.0);
}
