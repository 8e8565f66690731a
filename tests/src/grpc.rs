//! gRPC peers for the HTTP/2 tests: `tests/grpc/peer.py` (grpcio, from the
//! venv `cargo xtask setup` makes) as a server on a port of its own, or as
//! a client that runs one scenario on one channel and says what it saw.
//! A server is killed when dropped, and exits by itself when the test
//! process goes (its stdin closes).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
};

/// The venv's Python, with grpcio.
pub fn python() -> PathBuf {
    let p = xtask::setup::venv_python();
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask setup` (it installs grpcio into a venv)",
        p.display()
    );
    p
}

/// The peer script.
pub fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grpc/peer.py")
}

pub struct GrpcServer {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    _stdin: ChildStdin,
}

impl GrpcServer {
    /// Serves `test.Echo` on a free port of 127.0.0.1, answering as `name`.
    pub fn start(name: &str) -> GrpcServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(name, port)
    }

    pub fn start_on(name: &str, port: u16) -> GrpcServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Self::spawn(name, addr, Command::new(python()))
    }

    /// Serves `test.Echo` on `addr` (`0.0.0.0` and a port, for a pod)
    /// through `cmd`, a command for
    /// [`python`] (say, one that runs in a pod), answering as `name`.
    pub fn spawn(name: &str, addr: SocketAddr, mut cmd: Command) -> GrpcServer {
        let mut child = cmd
            .arg(peer_script())
            .args(["serve", &addr.port().to_string(), name])
            .arg(addr.ip().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gRPC peer");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the peer's first line");
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gRPC server {name} did not start: {line:?}");
        }
        GrpcServer {
            name: name.to_owned(),
            addr,
            child,
            _stdin: stdin,
        }
    }

    /// The line for a file namer's file.
    pub fn fs_line(&self) -> String {
        format!("{} {}\n", self.addr.ip(), self.addr.port())
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gRPC client command running `scenario` through `proxy` with
/// `:authority` `authority` (not started).
pub fn call_command(proxy: SocketAddr, authority: &str, scenario: &str, arg: &str) -> Command {
    let mut cmd = Command::new(python());
    with_call_args(&mut cmd, proxy, authority, scenario, arg);
    cmd
}

/// The peer's arguments for a client call, onto `cmd` (a command for
/// [`python`], say one that runs in a pod).
pub fn with_call_args(
    cmd: &mut Command,
    target: SocketAddr,
    authority: &str,
    scenario: &str,
    arg: &str,
) {
    cmd.arg(peer_script())
        .args(["call", &target.to_string(), authority, scenario, arg]);
}

/// The JSON a client call printed last.
pub fn answer(out: std::process::Output, scenario: &str) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gRPC client {scenario} failed: {}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Runs `scenario` and returns the JSON it printed last.
pub fn call(proxy: SocketAddr, authority: &str, scenario: &str, arg: &str) -> serde_json::Value {
    let out = call_command(proxy, authority, scenario, arg)
        .stderr(Stdio::inherit())
        .output()
        .expect("run the gRPC client");
    answer(out, scenario)
}
