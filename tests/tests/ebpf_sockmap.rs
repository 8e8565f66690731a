//! Root tests: the sockops and sk_msg programs, loaded into the real kernel
//! and attached to a cgroup made for the test.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddrV4,
    process::{Child, ChildStdout, Command, Stdio},
};

use proxy_common::Counter;
use sidetrack::intercept::{EbpfDataPath, EbpfOptions};
use sidetrack_tests::{Fnv64, cgroup::TestCgroup, pattern, require_root};

const PAYLOAD: usize = 4 << 20;

struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
    client: (SocketAddrV4, SocketAddrV4),
    server: (SocketAddrV4, SocketAddrV4),
}

impl Peer {
    /// Starts `tcp-peer`, inside `cgroup` when given, and reads the two
    /// sockets' addresses.
    fn start(cgroup: Option<&TestCgroup>) -> Peer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcp-peer"));
        cmd.arg(PAYLOAD.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = match cgroup {
            Some(cg) => cg.spawn(&mut cmd),
            None => cmd.spawn(),
        }
        .expect("start tcp-peer");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("read tcp-peer addresses");
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            (f.len(), f[0], f[3]),
            (6, "client", "server"),
            "tcp-peer said {line:?}"
        );
        let a = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        Peer {
            child,
            out,
            client: (a(f[1]), a(f[2])),
            server: (a(f[4]), a(f[5])),
        }
    }

    /// Lets the exchange run and checks both directions arrived byte-exact.
    fn exchange(mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read tcp-peer result");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "tcp-peer failed: {status}; said {line:?}");
        let want = format!("{:016x}", Fnv64::of(&pattern(PAYLOAD)));
        assert_eq!(line.trim(), format!("received {PAYLOAD} {want} {want}"));
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attach(cgroup: &TestCgroup) -> EbpfDataPath {
    sidetrack::logging::init(Default::default(), "info,sidetrack=debug");
    EbpfDataPath::load(&EbpfOptions {
        cgroup: cgroup.path().to_owned(),
        forward_logs: true,
        intercept: None,
    })
    .expect("load and attach the eBPF programs")
}

#[test]
fn sockets_in_the_cgroup_are_mapped_and_their_bytes_redirected() {
    require_root();
    let cgroup = TestCgroup::create("sockmap").unwrap();
    let datapath = attach(&cgroup);
    assert_eq!(datapath.counters().unwrap().get(Counter::SockhashAdded), 0);

    let peer = Peer::start(Some(&cgroup));
    // Both ends are filed under their own 4-tuple while the connection lives.
    let sockets = datapath.sockets().unwrap();
    assert!(
        sockets.contains(&peer.client),
        "client {:?} not in {sockets:?}",
        peer.client
    );
    assert!(
        sockets.contains(&peer.server),
        "server {:?} not in {sockets:?}",
        peer.server
    );
    assert_eq!(
        peer.client,
        (peer.server.1, peer.server.0),
        "the two ends are peers"
    );
    let before = datapath.counters().unwrap();
    assert_eq!(before.get(Counter::EstablishedActive), 1, "{before:?}");
    assert_eq!(before.get(Counter::EstablishedPassive), 1, "{before:?}");
    assert_eq!(before.get(Counter::SockhashAdded), 2, "{before:?}");
    assert_eq!(before.get(Counter::SockhashAddFailed), 0, "{before:?}");

    peer.exchange();

    let after = datapath.counters().unwrap();
    // Every byte each way went through sk_msg and straight to the peer.
    assert_eq!(
        after.get(Counter::BytesRedirected),
        2 * PAYLOAD as u64,
        "{after:?}"
    );
    assert!(after.get(Counter::MsgRedirected) >= 2, "{after:?}");
    assert_eq!(after.get(Counter::BytesPassed), 0, "{after:?}");
    // Closed sockets leave the map by themselves.
    let remaining = datapath.sockets().unwrap();
    assert!(
        remaining.is_empty(),
        "sockets left in the map: {remaining:?}"
    );
}

#[test]
fn sockets_outside_the_cgroup_are_untouched() {
    require_root();
    let cgroup = TestCgroup::create("outside").unwrap();
    let datapath = attach(&cgroup);

    let peer = Peer::start(None);
    let sockets = datapath.sockets().unwrap();
    assert!(
        !sockets.contains(&peer.client) && !sockets.contains(&peer.server),
        "{sockets:?}"
    );
    peer.exchange();

    let counters = datapath.counters().unwrap();
    for (counter, value) in counters.iter() {
        assert_eq!(value, 0, "{} = {value}", counter.name());
    }
    assert!(datapath.sockets().unwrap().is_empty());
}
