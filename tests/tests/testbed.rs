//! Root tests: the netns test bed (`xtask::testbed`). Pods reach each other,
//! the node and are reached from it, byte-exact; processes started in a pod
//! are in its cgroup and network namespace; and nothing is left behind, after
//! a normal drop, a panic, or a run that was killed.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::{fs::MetadataExt, process::ExitStatusExt},
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use sidetrack_tests::{Fnv64, pattern, require_root};
use xtask::testbed::{self, Node, Pod};

const ECHO: &str = env!("CARGO_BIN_EXE_netns-echo");
const PAYLOAD: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The tests compare the machine-wide sysctls before and after, so they run
/// one at a time (threads inside a test still make nodes in parallel).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// An echo server process in a pod.
struct Server {
    child: Child,
    out: BufReader<ChildStdout>,
    addr: SocketAddrV4,
}

impl Server {
    fn start(pod: &Pod) -> Server {
        let mut child = pod
            .command(ECHO)
            .args(["serve", &pod.ip().to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start netns-echo in pod {}: {e}", pod.name()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let line = read_line(&mut out);
        let addr = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("netns-echo said {line:?}"));
        Server { child, out, addr }
    }

    /// The peer of the next connection the server accepted (it prints it
    /// before echoing, so after a finished exchange this never blocks).
    /// The `closed` lines of earlier connections are passed over.
    fn peer(&mut self) -> SocketAddrV4 {
        let mut line = read_line(&mut self.out);
        while line.starts_with("closed ") {
            line = read_line(&mut self.out);
        }
        line.strip_prefix("peer ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("netns-echo said {line:?}"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_line(out: &mut impl BufRead) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("read a line from a child");
    line.trim().to_owned()
}

/// Runs `netns-echo send` in `pod` against `to`; returns the client's address.
fn send_from(pod: &Pod, to: SocketAddrV4) -> SocketAddrV4 {
    let out = pod
        .command(ECHO)
        .args(["send", &to.to_string(), &PAYLOAD.to_string()])
        .output()
        .expect("run netns-echo send");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "send from {} to {to}: {}; {said} {}",
        pod.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let f: Vec<&str> = said.split_whitespace().collect();
    let want = format!("{:016x}", Fnv64::of(&pattern(PAYLOAD)));
    assert_eq!(
        f[..4],
        ["echoed", &PAYLOAD.to_string(), &want, "from"],
        "from {} to {to}",
        pod.name()
    );
    f[4].parse().unwrap()
}

/// Sends the pattern to `to` from this thread and checks the echo.
fn exchange(to: SocketAddrV4) -> SocketAddr {
    let mut stream = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let local = stream.local_addr().unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&pattern(PAYLOAD)).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(PAYLOAD);
    stream.read_to_end(&mut back).expect("read the echo");
    sender.join().unwrap();
    assert!(back == pattern(PAYLOAD), "the echo from {to} differs");
    local
}

/// Accepts one connection on `listener` (within 10 s) and echoes it; returns the peer.
fn echo_once(listener: TcpListener) -> thread::JoinHandle<SocketAddr> {
    thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + IO_TIMEOUT;
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "nobody connected to the node");
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        stream.write_all(&got).unwrap();
        peer
    })
}

/// Checks that `pid` is in `pod`'s cgroup and network namespace.
fn assert_inside(pid: u32, pod: &Pod) {
    let root = testbed::cgroup2_root().unwrap();
    let want = Path::new("/").join(pod.cgroup_path().strip_prefix(&root).unwrap());
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = cgroups.lines().find_map(|l| l.strip_prefix("0::"));
    assert_eq!(v2, Some(want.to_str().unwrap()), "cgroup of {pid}");
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    assert_eq!(ns, pod.netns_inode().unwrap(), "netns of {pid}");
}

/// What a node made, to check after it is gone.
struct Made {
    netns: Vec<String>,
    veths: Vec<String>,
    cgroups: Vec<PathBuf>,
    node_ip: Ipv4Addr,
}

impl Made {
    fn of(node: &Node) -> Made {
        let mut cgroups: Vec<PathBuf> = node
            .pods()
            .iter()
            .map(|p| p.cgroup_path().to_owned())
            .collect();
        cgroups.push(node.cgroup_path().to_owned());
        Made {
            netns: node.pods().iter().map(|p| p.netns_name().into()).collect(),
            veths: node.pods().iter().map(|p| p.host_veth().into()).collect(),
            cgroups,
            node_ip: node.ip(),
        }
    }

    fn assert_gone(&self) {
        let netns = ip(&["netns", "list"]);
        let links = ip(&["-o", "link"]);
        let lo = ip(&["-o", "addr", "show", "dev", "lo"]);
        for ns in &self.netns {
            assert!(
                !netns
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns)),
                "netns {ns} is left: {netns}"
            );
        }
        for veth in &self.veths {
            let name = format!(" {veth}@");
            assert!(!links.contains(&name), "veth {veth} is left: {links}");
        }
        for cg in &self.cgroups {
            assert!(!cg.exists(), "cgroup {} is left", cg.display());
        }
        let addr = format!(" {}/32 ", self.node_ip);
        assert!(!lo.contains(&addr), "{} is left on lo: {lo}", self.node_ip);
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {:?}", out);
    String::from_utf8(out.stdout).unwrap()
}

fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap()
        .trim()
        .to_owned()
}

/// The sysctls are back to `before`, unless another process's node is live
/// (then they are rightly still set for it).
fn assert_sysctls_restored(before: &str) {
    let others = testbed::live_node_owners().unwrap();
    if others.is_empty() {
        assert_eq!(ip_forward(), before, "net.ipv4.ip_forward was not restored");
    } else {
        eprintln!("sysctl check skipped: processes {others:?} have live test bed nodes");
    }
}

#[test]
fn pods_reach_each_other_and_the_node_and_nothing_is_left() {
    require_root();
    let _serial = serial();
    let forward_before = ip_forward();
    let started = Instant::now();
    let mut node = Node::new("pods").expect("make a node");
    let a = node.add_pod("a").expect("add pod a");
    let b = node.add_pod("b").expect("add pod b");
    let c = node.add_pod("c").expect("add pod c");
    let made = Made::of(&node);
    eprintln!("node and 3 pods up in {:?}", started.elapsed());
    assert_eq!(ip_forward(), "1");

    let mut servers: Vec<Server> = [&a, &b, &c].map(Server::start).into();
    for (server, pod) in servers.iter().zip([&a, &b, &c]) {
        assert_eq!(*server.addr.ip(), pod.ip());
        assert_inside(server.pid(), pod);
    }

    // Pod to pod, forwarded by the node.
    let client = send_from(&b, servers[0].addr);
    assert_eq!(*client.ip(), b.ip());
    assert_eq!(servers[0].peer(), client);

    // Pod to node.
    let listener = TcpListener::bind((node.ip(), 0)).expect("bind the node address");
    let node_addr = match listener.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let accepted = echo_once(listener);
    let client = send_from(&c, node_addr);
    assert_eq!(accepted.join().unwrap(), SocketAddr::V4(client));
    assert_eq!(*client.ip(), c.ip());

    // Node to pod: the host route's `src` makes the node address the source.
    let local = exchange(servers[0].addr);
    assert_eq!(local.ip(), node.ip());
    assert_eq!(
        servers[0].peer(),
        match local {
            SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        }
    );

    // A thread of this process moved into pod c's namespace reaches pod b.
    let (local, ns) = c
        .run_in(|| {
            let ns = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            (exchange(servers[1].addr), ns)
        })
        .expect("run in pod c");
    assert_eq!(ns, c.netns_inode().unwrap());
    assert_eq!(local.ip(), c.ip());
    assert_eq!(SocketAddr::V4(servers[1].peer()), local);

    let server_pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let started = Instant::now();
    drop(node);
    eprintln!("torn down in {:?}", started.elapsed());
    for pid in server_pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = state.rsplit(')').next().unwrap_or("").trim_start();
        assert!(
            state.is_empty() || running.starts_with('Z'),
            "server {pid} survived the teardown: {state}"
        );
    }
    servers.clear();
    made.assert_gone();
    assert_sysctls_restored(&forward_before);
}

#[test]
fn a_panic_with_a_node_alive_still_tears_it_down() {
    require_root();
    let _serial = serial();
    let forward_before = ip_forward();
    let made = Mutex::new(None);
    let server = Mutex::new(None);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut node = Node::new("panics").expect("make a node");
        let pod = node.add_pod("doomed").expect("add a pod");
        node.add_pod("bystander").expect("add a pod");
        *made.lock().unwrap() = Some(Made::of(&node));
        // Left running on purpose: the teardown must kill it.
        let child = pod
            .command(ECHO)
            .args(["serve", &pod.ip().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start a server");
        assert_inside(child.id(), &pod);
        *server.lock().unwrap() = Some(child);
        panic!("the test body fails with the node alive");
    }));
    assert!(result.is_err());
    made.lock().unwrap().take().unwrap().assert_gone();
    assert_sysctls_restored(&forward_before);

    let mut server = server.lock().unwrap().take().unwrap();
    let status = server.try_wait().expect("try_wait");
    assert_eq!(
        status.and_then(|s| s.signal()),
        Some(libc::SIGKILL),
        "the server in the pod should have been killed by the teardown"
    );
}

/// Starts `netns-echo MODE` (abandon-node or hold-node) and reads what its
/// node made.
fn node_in_a_child(mode: &str) -> (Child, Made) {
    let mut child = Command::new(ECHO)
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start netns-echo {mode}: {e}"));
    let line = read_line(&mut BufReader::new(child.stdout.take().unwrap()));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (f.len(), f[0]),
        (5, "ready"),
        "netns-echo {mode} said {line:?}"
    );
    let pod_cg = PathBuf::from(f[3]);
    let made = Made {
        netns: vec![f[1].to_owned()],
        veths: vec![f[2].to_owned()],
        cgroups: vec![pod_cg.clone(), pod_cg.parent().unwrap().to_owned()],
        node_ip: f[4].parse().unwrap(),
    };
    assert!(ip(&["netns", "list"]).contains(f[1]));
    assert!(
        !std::fs::read_to_string(pod_cg.join("cgroup.procs"))
            .unwrap()
            .trim()
            .is_empty(),
        "the server should run in its pod"
    );
    (child, made)
}

#[test]
fn sigterm_tears_the_node_down() {
    require_root();
    let _serial = serial();
    let forward_before = ip_forward();
    let (mut child, made) = node_in_a_child("hold-node");
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "hold-node did not exit on SIGTERM"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
    made.assert_gone();
    assert_sysctls_restored(&forward_before);
}

#[test]
fn cleanup_stale_removes_what_a_killed_run_left() {
    require_root();
    let _serial = serial();
    let forward_before = ip_forward();

    // A run that is killed (SIGKILL: no teardown) with a node, a pod and a
    // server in the pod.
    let (mut run, mut left) = node_in_a_child("abandon-node");
    run.kill().unwrap();
    run.wait().unwrap();
    let dead = run.id();

    // And leftovers made by hand under the same dead pid.
    let hand_ns = format!("stb{dead}n7-byhand");
    let hand_cg = testbed::cgroup2_root()
        .unwrap()
        .join(format!("sidetrack-bed-byhand-{dead}-7"));
    ip(&["netns", "add", &hand_ns]);
    std::fs::create_dir_all(hand_cg.join("pod")).unwrap();
    left.netns.push(hand_ns);
    left.cgroups.extend([hand_cg.join("pod"), hand_cg]);
    // Cgroups a test of that run made for itself: under the v2 root, and in
    // the v1 pids hierarchy where the machine has one.
    let mut test_cgs = vec![
        testbed::cgroup2_root()
            .unwrap()
            .join(format!("sidetrack-test-{dead}-0-byhand")),
    ];
    if let Some(pids_v1) = testbed::pids_v1_root() {
        test_cgs.push(pids_v1.join(format!("sidetrack-test-{dead}-byhand")));
    }
    for cg in &test_cgs {
        std::fs::create_dir(cg).unwrap();
    }
    let made_by_tests = test_cgs.len();
    left.cgroups.extend(test_cgs);
    // An iptables-mode proxy's table, for a node address no live node has.
    let on_lo = ip(&["-o", "-4", "addr", "show", "dev", "lo"]);
    let block = (0..=255u8)
        .find(|b| !on_lo.contains(&format!("198.18.{b}.")))
        .unwrap();
    let table = format!("sidetrack_198_18_{block}_1_4140");
    let nft_tables = || {
        let out = Command::new("nft")
            .args(["list", "tables", "ip"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        Command::new("nft")
            .args(["add", "table", "ip", &table])
            .status()
            .unwrap()
            .success()
    );
    // Gone by the end whatever happens (the test may fail before cleanup).
    struct DeleteTable<'a>(&'a str);
    impl Drop for DeleteTable<'_> {
        fn drop(&mut self) {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", self.0])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _table_guard = DeleteTable(&table);
    assert!(nft_tables().contains(&table));

    let removed = testbed::cleanup_stale().expect("cleanup_stale");
    assert!(
        removed >= 7 + made_by_tests,
        "removed only {removed} leftovers"
    );
    left.assert_gone();
    assert!(
        !nft_tables().contains(&table),
        "the dead run's nftables table stays"
    );
    assert_sysctls_restored(&forward_before);
}

#[test]
fn parallel_nodes_get_their_own_names_and_addresses() {
    require_root();
    let _serial = serial();
    let forward_before = ip_forward();
    let runs: Vec<_> = (0..3)
        .map(|i| {
            thread::spawn(move || {
                let mut node = Node::new("parallel").expect("make a node");
                let server = node.add_pod(&format!("server{i}")).unwrap();
                let client = node.add_pod(&format!("client{i}")).unwrap();
                let mut srv = Server::start(&server);
                let from = send_from(&client, srv.addr);
                assert_eq!(srv.peer(), from);
                drop(srv);
                let made = Made::of(&node);
                let ips = [node.ip(), server.ip(), client.ip()];
                (made, ips, node)
            })
        })
        .collect();
    let mut nodes = Vec::new();
    let mut all_ips = Vec::new();
    let mut all_names = Vec::new();
    for run in runs {
        let (made, ips, node) = run.join().expect("a parallel node failed");
        all_ips.extend(ips);
        all_names.extend(made.netns.iter().chain(&made.veths).cloned());
        all_names.extend(made.cgroups.iter().map(|c| c.display().to_string()));
        nodes.push((made, node));
    }
    let count = (all_ips.len(), all_names.len());
    all_ips.sort();
    all_ips.dedup();
    all_names.sort();
    all_names.dedup();
    assert_eq!(
        (all_ips.len(), all_names.len()),
        count,
        "two nodes share a name or address"
    );
    for (made, node) in nodes {
        drop(node);
        made.assert_gone();
    }
    assert_sysctls_restored(&forward_before);
}
