//! The ad-hoc staging scenario on the netns test bed, shared by
//! `cargo xtask demo` and the interception tests.
//!
//! Pods `client`, `hello`, `world-v1` and `world-v2` run the demo apps
//! (`apps.rs`); the proxy runs in the node's root network namespace, in a
//! cgroup of the node (so the eBPF programs, attached to the node's cgroup,
//! see its sockets too), listening on the node address. Services have
//! addresses nothing owns (`hello` 198.19.0.1:80, `world` 198.19.0.2:80):
//! only interception gets a connect there anywhere. The file namer's
//! directory says where each version runs; the base dtab sends `world` to
//! `world-v1`, and a request's `l5d-dtab: /host/world => /srv/world-v2`
//! stages `world-v2` for that request alone.

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::testbed::{BedLock, Node, Pod, SERVICE_RANGE};

/// The base dtab of the Linkerd tutorial this scenario follows.
pub const DTAB: &str =
    "/srv => /#/io.l5d.fs;\n/host => /srv;\n/svc => /host;\n/host/world => /srv/world-v1;\n";
/// The override that stages world-v2.
pub const STAGE_V2: &str = "l5d-dtab: /host/world => /srv/world-v2";
/// Where the apps listen in their pods.
pub const APP_PORT: u16 = 8080;
/// A port the interception leaves alone (excluded), served by `hello` too.
pub const EXCLUDED_PORT: u16 = 9091;
pub const PROXY_PORT: u16 = 4140;
/// Where the shadowing scenario's `users` services listen (and the next port).
pub const USERS_PORT: u16 = 8081;
/// The mirror that compares `users-v2` with `users`, `users-b` telling
/// the noise.
pub const USERS_MIRROR: &str =
    "mirrors:\n  - {name: /svc/users, to: /srv/users-v2, secondary: /srv/users-b}\n";
pub const ADMIN_PORT: u16 = 9990;
pub const PROXY_MARK: u32 = 0x5354;

/// The service addresses.
pub fn hello_service() -> SocketAddrV4 {
    SocketAddrV4::new(service_ip(1), 80)
}

pub fn world_service() -> SocketAddrV4 {
    SocketAddrV4::new(service_ip(2), 80)
}

fn service_ip(n: u8) -> Ipv4Addr {
    let [a, b, _, _] = SERVICE_RANGE.0.octets();
    Ipv4Addr::new(a, b, 0, n)
}

/// How traffic reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ebpf,
    Iptables,
}

impl Mode {
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
        }
    }
}

/// The programs the scenario runs: the proxy, and the apps (a program plus
/// leading arguments, before `hello|world LISTEN ARG`).
#[derive(Clone, Debug)]
pub struct Bins {
    pub sidetrack: PathBuf,
    pub app: PathBuf,
    pub app_args: Vec<String>,
}

impl Bins {
    /// What `cargo xtask demo` and `soak` run: installs what is missing,
    /// builds the eBPF object and the debug `sidetrack`; the apps are this
    /// very binary's `app` subcommand.
    pub fn build() -> Result<Bins> {
        if !crate::setup::is_complete() {
            crate::setup::run()?;
        }
        crate::build_ebpf::run()?;
        crate::cmd::step("building sidetrack");
        crate::cmd::run(crate::cmd::cargo().args([
            "build",
            "--locked",
            "--package",
            "sidetrack",
            "--bin",
            "sidetrack",
        ]))?;
        Ok(Bins {
            sidetrack: crate::target_dir().join("debug/sidetrack"),
            app: std::env::current_exe()?,
            app_args: vec!["app".into()],
        })
    }
}

/// The running scenario. Dropping it stops every process and tears the node
/// down.
pub struct Staging {
    pub client: Pod,
    pub hello: Pod,
    pub world_v1: Pod,
    pub world_v2: Pod,
    pub proxy_addr: SocketAddrV4,
    pub admin_addr: SocketAddrV4,
    pub dir: PathBuf,
    pub mode: Mode,
    pub bins: Bins,
    apps: Vec<Child>,
    proxy: Option<Child>,
    proxy_log: PathBuf,
    /// Settings appended to the proxy's file (rules, an override policy).
    extra_config: String,
    /// Proxies a successor took over from, still draining or waiting for
    /// their stop signal, with their logs.
    retired: Vec<(Child, PathBuf)>,
    /// Proxies started so far (each has its own settings and log file).
    starts: usize,
    /// iptables mode: the machine's nftables are this run's alone (see
    /// `BedLock::take_nft`); dropped after the proxy removed its rules.
    _nft: Option<BedLock>,
    // Last: dropped after the processes are gone.
    pub node: Node,
}

impl Staging {
    /// Makes the node and its pods, starts the apps and the proxy, and waits
    /// until the proxy is ready.
    pub fn start(tag: &str, mode: Mode, bins: Bins) -> Result<Staging> {
        Staging::start_with(tag, mode, bins, "")
    }

    /// [`Staging::start`] with `extra_config` (YAML lines: limits,
    /// workers) appended to the proxy's settings from its first start.
    pub fn start_with(tag: &str, mode: Mode, bins: Bins, extra_config: &str) -> Result<Staging> {
        let nft = match mode {
            Mode::Iptables => Some(BedLock::take_nft()?),
            Mode::Ebpf => None,
        };
        let mut node = Node::new(tag)?;
        let client = node.add_pod("client")?;
        let hello = node.add_pod("hello")?;
        let world_v1 = node.add_pod("world-v1")?;
        let world_v2 = node.add_pod("world-v2")?;
        let dir =
            std::env::temp_dir().join(format!("sidetrack-staging-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("disco"))?;
        let node_ip = node.ip();
        let mut staging = Staging {
            proxy_addr: SocketAddrV4::new(node_ip, PROXY_PORT),
            admin_addr: SocketAddrV4::new(node_ip, ADMIN_PORT),
            client,
            hello,
            world_v1,
            world_v2,
            dir,
            mode,
            bins,
            apps: Vec::new(),
            proxy: None,
            proxy_log: PathBuf::new(),
            extra_config: extra_config.to_owned(),
            retired: Vec::new(),
            starts: 0,
            _nft: nft,
            node,
        };
        staging.start_apps()?;
        staging.write_namer_files()?;
        staging.start_proxy()?;
        Ok(staging)
    }

    fn app(&self, pod: &Pod, args: &[String]) -> Result<Child> {
        let mut cmd = pod.command(&self.bins.app);
        cmd.args(&self.bins.app_args)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd.spawn()
            .with_context(|| format!("start {args:?} in pod {}", pod.name()))
    }

    fn start_apps(&mut self) -> Result<()> {
        let listen = |port: u16| format!("0.0.0.0:{port}");
        let world = world_service().to_string();
        let specs: Vec<(Pod, Vec<String>)> = vec![
            (
                self.hello.clone(),
                vec!["hello".into(), listen(APP_PORT), world.clone()],
            ),
            (
                self.hello.clone(),
                vec!["world".into(), listen(EXCLUDED_PORT), "hello-aside".into()],
            ),
            (
                self.world_v1.clone(),
                vec!["world".into(), listen(APP_PORT), "world".into()],
            ),
            (
                self.world_v2.clone(),
                vec!["world".into(), listen(APP_PORT), "earth".into()],
            ),
        ];
        for (pod, args) in specs {
            let child = self.app(&pod, &args)?;
            self.apps.push(child);
        }
        for pod in [&self.hello, &self.world_v1, &self.world_v2] {
            wait_listening(pod, APP_PORT)?;
        }
        Ok(())
    }

    /// The shadowing scenario's services, beside the others: `users`
    /// (world-v1's pod, port 8081), a second instance of it `users-b`
    /// (port 8082) and the candidate `users-v2` (world-v2's pod), all
    /// `json-world`; the candidate greets "earth" where the others greet
    /// "world". Returns the mirror entry that compares them.
    pub fn start_users(&mut self) -> Result<&'static str> {
        let specs = [
            (self.world_v1.clone(), USERS_PORT, "users", "world"),
            (self.world_v1.clone(), USERS_PORT + 1, "users-b", "world"),
            (self.world_v2.clone(), USERS_PORT, "users-v2", "earth"),
        ];
        for (pod, port, name, word) in &specs {
            let child = self.app(
                pod,
                &[
                    "json-world".into(),
                    format!("0.0.0.0:{port}"),
                    (*word).into(),
                ],
            )?;
            self.apps.push(child);
            wait_listening(pod, *port)?;
            fs::write(
                self.dir.join("disco").join(name),
                format!("{} {port}\n", pod.ip()),
            )?;
        }
        Ok(USERS_MIRROR)
    }

    fn write_namer_files(&self) -> Result<()> {
        for pod in [&self.hello, &self.world_v1, &self.world_v2] {
            fs::write(
                self.dir.join("disco").join(pod.name()),
                format!("{} {APP_PORT}\n", pod.ip()),
            )?;
        }
        Ok(())
    }

    /// The proxy's settings file: the scenario's, with its handover socket
    /// in the scenario's directory.
    pub fn config(&self) -> String {
        let (svc, svc_len) = SERVICE_RANGE;
        let mut dtab = String::new();
        for line in DTAB.lines() {
            dtab.push_str("  ");
            dtab.push_str(line);
            dtab.push('\n');
        }
        format!(
            "listen: {proxy}\nadmin: {admin}\nintercept: {mode}\nfs_dir: {disco}\nwatch_interval_ms: 200\n\
             dtab: |\n{dtab}\
             interception:\n  cidrs: [{svc}/{svc_len}, {hello}/32, {v1}/32]\n  exclude_ports: [{EXCLUDED_PORT}]\n  \
             cgroup: {cgroup}\n  mark: {PROXY_MARK}\nhandover:\n  socket: {handover}\n",
            handover = self.dir.join("handover.sock").display(),
            proxy = self.proxy_addr,
            admin = self.admin_addr,
            mode = self.mode.flag(),
            disco = self.dir.join("disco").display(),
            hello = self.hello.ip(),
            v1 = self.world_v1.ip(),
            cgroup = self.node.cgroup_path().display(),
        ) + &self.extra_config
    }

    /// Rewrites the proxy's settings file with `extra` (YAML) appended:
    /// what reloads live (rules, the override policy) applies within the
    /// watch interval (200 ms).
    pub fn reconfigure(&mut self, extra: &str) -> Result<()> {
        self.extra_config = extra.to_owned();
        let config = self.dir.join(format!("sidetrack-{}.yaml", self.starts));
        let tmp = self.dir.join(".sidetrack.yaml.tmp");
        fs::write(&tmp, self.config())?;
        fs::rename(&tmp, &config)?;
        Ok(())
    }

    /// Starts the proxy (again, after `kill_proxy`) and waits for /ready.
    pub fn start_proxy(&mut self) -> Result<()> {
        let (child, log) = self.spawn_proxy(&self.config(), &[])?;
        self.proxy = Some(child);
        self.proxy_log = log;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = &mut self.proxy
                && let Some(status) = child.try_wait()?
            {
                bail!("sidetrack exited ({status}):\n{}", self.proxy_log());
            }
            if http_get(SocketAddr::V4(self.admin_addr), "/ready")
                .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("sidetrack did not become ready:\n{}", self.proxy_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `sidetrack run` with the settings `config` (and `env`) as a
    /// process of the node, logging to a file of its own.
    fn spawn_proxy(&mut self, config: &str, env: &[(&str, &str)]) -> Result<(Child, PathBuf)> {
        self.starts += 1;
        let path = self.dir.join(format!("sidetrack-{}.yaml", self.starts));
        fs::write(&path, config)?;
        let proxy_cgroup = self.node.cgroup_path().join("sidetrack");
        if !proxy_cgroup.is_dir() {
            fs::create_dir(&proxy_cgroup)?;
        }
        let log_path = self.dir.join(format!("sidetrack-{}.log", self.starts));
        let log = fs::File::create(&log_path)?;
        let mut cmd = Command::new(&self.bins.sidetrack);
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        node_process(&mut cmd, &proxy_cgroup)?;
        let child = cmd.spawn().context("start sidetrack")?;
        Ok((child, log_path))
    }

    /// Starts a second proxy with `config` while the running one serves,
    /// as a DaemonSet's rolling update with a surge does. `Ok(Ok(()))` once
    /// it took over (it says where it listens): it is the proxy from then
    /// on, and the old one is retired (see [`Staging::stop_retired`]).
    /// `Ok(Err(..))` with its exit status and log when it exits first.
    pub fn start_successor(
        &mut self,
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<std::result::Result<(), String>> {
        let (mut child, log) = self.spawn_proxy(config, env)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                let text = fs::read_to_string(&log).unwrap_or_default();
                return Ok(Err(format!("exited ({status}):\n{text}")));
            }
            if fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on http://")) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the successor did not take over:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(old) = self.proxy.replace(child) {
            let old_log = std::mem::replace(&mut self.proxy_log, log);
            self.retired.push((old, old_log));
        } else {
            self.proxy_log = log;
        }
        Ok(Ok(()))
    }

    /// The retired proxies' logs, oldest first.
    pub fn retired_logs(&self) -> Vec<String> {
        self.retired
            .iter()
            .map(|(_, log)| fs::read_to_string(log).unwrap_or_default())
            .collect()
    }

    /// Sends SIGTERM to every retired proxy (what the kubelet does when it
    /// deletes the old pod) and waits up to `limit` for each; their exit
    /// statuses and logs. One that does not exit in time is killed, and
    /// that is an error.
    pub fn stop_retired(
        &mut self,
        limit: Duration,
    ) -> Result<Vec<(std::process::ExitStatus, String)>> {
        let mut out = Vec::new();
        for (mut child, log) in std::mem::take(&mut self.retired) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + limit;
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if Instant::now() > deadline {
                    child.kill()?;
                    child.wait()?;
                    bail!(
                        "a retired proxy did not exit within {limit:?}:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            out.push((status, fs::read_to_string(&log).unwrap_or_default()));
        }
        Ok(out)
    }

    /// Stops the proxy with SIGTERM (it drains, detaches or removes its
    /// interception, and exits) and waits for it.
    pub fn stop_proxy(&mut self) -> Result<std::process::ExitStatus> {
        self.signal_proxy(libc::SIGTERM)?;
        self.wait_proxy(Duration::from_secs(15))
    }

    /// Sends `signal` to the running proxy.
    pub fn signal_proxy(&self, signal: libc::c_int) -> Result<()> {
        let Some(child) = &self.proxy else {
            bail!("the proxy is not running")
        };
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// The running proxy's process id.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(Child::id)
    }

    /// Whether the proxy is still running.
    pub fn proxy_running(&mut self) -> Result<bool> {
        Ok(match &mut self.proxy {
            Some(child) => child.try_wait()?.is_none(),
            None => false,
        })
    }

    /// Waits up to `limit` for the proxy to exit; kills it after that.
    pub fn wait_proxy(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.proxy.take() else {
            bail!("the proxy is not running")
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!(
                    "the proxy did not exit within {limit:?}:\n{}",
                    self.proxy_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the proxy with SIGKILL (no cleanup of its own) and waits for it.
    pub fn kill_proxy(&mut self) -> Result<()> {
        if let Some(mut child) = self.proxy.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// What the proxy logged so far.
    pub fn proxy_log(&self) -> String {
        fs::read_to_string(&self.proxy_log).unwrap_or_default()
    }

    /// `curl http://hello/` from the client pod, with extra header lines;
    /// returns the body.
    pub fn get_hello(&self, headers: &[&str]) -> Result<String> {
        let out = self.curl("http://hello:80/", hello_service(), headers)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `curl` from the client pod to `url`, whose host resolves to `addr`
    /// (the pods have no DNS); returns the body. Fails on a non-2xx status.
    pub fn curl(&self, url: &str, addr: SocketAddrV4, headers: &[&str]) -> Result<Vec<u8>> {
        self.curl_to(url, &format!("{}:{}", addr.ip(), addr.port()), headers)
    }

    /// [`Staging::curl`] with the address as curl's `--connect-to` takes
    /// it: `ip:port`, or `[ipv6]:port` (curl then connects from an AF_INET6
    /// socket).
    pub fn curl_to(&self, url: &str, addr: &str, headers: &[&str]) -> Result<Vec<u8>> {
        let authority = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        // --connect-to must match host and port exactly, or curl would ask
        // DNS for the name: spell the default port out.
        let host_port = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let mut cmd = self.client.command("curl");
        cmd.args([
            "--silent",
            "--show-error",
            "--fail-with-body",
            "--max-time",
            "10",
        ])
        .arg("--connect-to")
        .arg(format!("{host_port}:{addr}"));
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        cmd.arg(url);
        let out: Output = cmd.output().context("run curl in the client pod")?;
        ensure!(
            out.status.success(),
            "curl {url} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(out.stdout)
    }

    /// The proxy's /metrics.
    pub fn metrics(&self) -> Result<String> {
        let (status, body) = http_get(SocketAddr::V4(self.admin_addr), "/metrics")?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Retired proxies first (they leave interception alone), then the
        // current one gracefully, so that iptables mode removes its rules.
        if self.stop_retired(Duration::from_secs(15)).is_err() {
            for (child, _) in &mut self.retired {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.proxy.is_some() && self.stop_proxy().is_err() {
            let _ = self.kill_proxy();
        }
        for child in &mut self.apps {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Makes `cmd` a process of the node itself: between fork and exec it joins
/// the cgroup `dir` (it stays in the root network namespace) and unblocks
/// every signal. `teardown_on_signal` blocks SIGTERM, SIGINT and SIGHUP in
/// this process (a thread takes them with `sigwait`) and a child inherits
/// the mask: without this, a proxy would never see the SIGTERM that stops it
/// gracefully.
pub fn node_process(cmd: &mut Command, dir: &Path) -> Result<()> {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    // SAFETY: between fork and exec the closure only calls write(2),
    // sigemptyset and sigprocmask (async-signal-safe) on a descriptor opened
    // before the fork and a local set.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    Ok(())
}

/// Waits until something in `pod` accepts connections on `port`.
pub fn wait_listening(pod: &Pod, port: u16) -> Result<()> {
    let addr = SocketAddr::from((pod.ip(), port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on {addr} in pod {}", pod.name())
}

/// A plain GET from the root namespace; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_owned()))
}

/// The sum of a metric's samples whose line contains every `label="value"`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
