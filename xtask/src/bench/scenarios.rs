//! The benchmark's test bed and its scenarios: one node with a `client` and a
//! `server` pod, and, one at a time, the proxy a scenario puts between them.
//!
//! Every proxy runs in the node's root namespace, listens on the node
//! address, and lives in the cgroup `<node>/proxy`: its processes are read
//! from that cgroup's `cgroup.procs` (nginx's master and worker alike), and
//! the node's teardown kills whatever is left there on every path. Sidetrack
//! is configured as `staging.rs` does it (one worker); nginx and haproxy get
//! files of their own in the bench's temporary directory (their own pid
//! files, ports and logs: the system's services are neither used nor
//! touched).
//!
//! `baseline-*` run the `--baseline` revision's `sidetrack` exactly as their
//! `sidetrack-*` twins run the current one. With `--pod-cgroups` the client
//! pod, the server pod and the proxy also get a CPU cgroup each (the v1 cpu
//! hierarchy, on these hybrid hosts), which the `*_pods` phases move them
//! into and out of again.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{loadgen, proc};
use crate::{
    staging::{http_get, node_process},
    testbed::{Node, Pod, SERVICE_RANGE, cpu_v1_root},
};

pub const SERVER_PORT: u16 = 8080;
pub const SIDETRACK_PORT: u16 = 4140;
pub const SIDETRACK_ADMIN_PORT: u16 = 9990;
pub const NGINX_PORT: u16 = 4141;
pub const HAPROXY_PORT: u16 = 4142;
pub const RELAY_PORT: u16 = 4143;
pub const PINGORA_PORT: u16 = 4144;
/// The service the transparent scenarios call: an address nothing owns.
pub const SERVICE_PORT: u16 = 80;
pub const PROXY_MARK: u32 = 0x5354;
/// Connections every proxy is configured to take: room for the
/// many-connections phase's 9,900 clients and their server connections.
/// haproxy is the exception: it needs two descriptors per `maxconn` and
/// refuses to start without them, and these VMs cap RLIMIT_NOFILE at
/// 20,000 (hard, without CAP_SYS_RESOURCE to raise it), so it gets
/// [`HAPROXY_MAXCONN`].
pub const MAX_CONNECTIONS: usize = 16_384;
pub const HAPROXY_MAXCONN: usize = 9_950;
/// nginx's `worker_rlimit_nofile`: under the 20,000 hard limit.
const NGINX_NOFILE: usize = 19_990;
/// How long a proxy's start waits for its ports to be free (a previous
/// one's listener closing).
const PORT_WAIT: Duration = Duration::from_secs(10);
/// "Never splice": the copy variant of the large-body part.
pub const NO_SPLICE: u64 = 1 << 40;

/// How the client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Direct,
    SidetrackExplicit,
    SidetrackIptables,
    SidetrackEbpf,
    Nginx,
    Haproxy,
    /// A minimal reverse proxy on Cloudflare's Pingora (`xtask/peers/pingora`).
    Pingora,
    /// The floor of an epoll-based userspace hop: a byte pump with the
    /// system calls Sidetrack makes and nothing else (`xtask app relay`).
    TcpRelay,
    /// The same pump on a tokio runtime like Sidetrack's workers': the
    /// runtime's own cost, over `tcp-relay` (`xtask app tokio-relay`).
    TokioRelay,
    /// The same pump on io_uring: two system calls a request instead of
    /// six (`xtask app uring-relay`).
    UringRelay,
    /// Sidetrack in eBPF mode with no HTTP work: the client calls the
    /// server's own address (intercepted) and starts with a line that is
    /// not HTTP, so Sidetrack tunnels the connection as opaque bytes. The
    /// floor of a userspace hop under the eBPF programs, on Sidetrack's
    /// event loop.
    SidetrackEbpfTunnel,
    /// `sidetrack-ebpf` with `yield_before_wait: false`: what the yield
    /// before a park buys.
    SidetrackEbpfNoYield,
    /// `sidetrack-ebpf` copying every request to a fast candidate (a
    /// second address of the same server): what shadowing costs the live
    /// exchange.
    SidetrackEbpfMirror100,
    /// The same, copying 10% of requests.
    SidetrackEbpfMirror10,
    /// `sidetrack-ebpf` writing an access log line (JSON) for every
    /// request to a file: what the access log costs.
    SidetrackEbpfAccessLog,
    /// `sidetrack-ebpf` capturing every request and its answer (bodies
    /// included) to the on-disk ring: what capture costs.
    SidetrackEbpfCapture,
    /// `sidetrack-ebpf` with the dashboard off, so no observer at all:
    /// what the dashboard (on by default) costs.
    SidetrackEbpfNoDashboard,
    /// `sidetrack-explicit` from the `--baseline` revision's binary.
    BaselineExplicit,
    /// `sidetrack-ebpf` from the `--baseline` revision's binary.
    BaselineEbpf,
}

impl Scenario {
    /// The default run: the limit, Sidetrack's three modes, the peers and
    /// the epoll floor.
    pub const ALL: [Scenario; 8] = [
        Scenario::Direct,
        Scenario::SidetrackExplicit,
        Scenario::SidetrackIptables,
        Scenario::SidetrackEbpf,
        Scenario::Nginx,
        Scenario::Haproxy,
        Scenario::Pingora,
        Scenario::TcpRelay,
    ];

    /// Scenarios only `--only` runs: the runtime floors and the variants of
    /// eBPF mode, which answer a design question rather than measure the
    /// product, and the features' costs (mirroring, the access log,
    /// capture, the dashboard), left out of the default run so that it fits
    /// its time (issue 23).
    pub const EXTRA: [Scenario; 9] = [
        Scenario::TokioRelay,
        Scenario::UringRelay,
        Scenario::SidetrackEbpfTunnel,
        Scenario::SidetrackEbpfNoYield,
        Scenario::SidetrackEbpfMirror100,
        Scenario::SidetrackEbpfMirror10,
        Scenario::SidetrackEbpfAccessLog,
        Scenario::SidetrackEbpfCapture,
        Scenario::SidetrackEbpfNoDashboard,
    ];

    /// `--baseline`'s scenarios, each after the one it repeats with the
    /// baseline revision's binary (same config, same everything).
    pub const BASELINE: [(Scenario, Scenario); 2] = [
        (Scenario::SidetrackExplicit, Scenario::BaselineExplicit),
        (Scenario::SidetrackEbpf, Scenario::BaselineEbpf),
    ];

    /// Scenarios read against another of the same run (what a feature
    /// costs), like `--baseline`'s pairs.
    pub const COMPARED: [(Scenario, Scenario); 5] = [
        (Scenario::SidetrackEbpfMirror100, Scenario::SidetrackEbpf),
        (Scenario::SidetrackEbpfMirror10, Scenario::SidetrackEbpf),
        (Scenario::SidetrackEbpfAccessLog, Scenario::SidetrackEbpf),
        (Scenario::SidetrackEbpfCapture, Scenario::SidetrackEbpf),
        (Scenario::SidetrackEbpf, Scenario::SidetrackEbpfNoDashboard),
    ];

    fn is_baseline(self) -> bool {
        Scenario::BASELINE.iter().any(|&(_, b)| b == self)
    }

    /// What the load generator sends on each connection before the first
    /// request.
    pub fn preamble(self) -> Option<&'static str> {
        (self == Scenario::SidetrackEbpfTunnel).then_some("@not-http")
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::SidetrackExplicit => "sidetrack-explicit",
            Scenario::SidetrackIptables => "sidetrack-iptables",
            Scenario::SidetrackEbpf => "sidetrack-ebpf",
            Scenario::Nginx => "nginx",
            Scenario::Haproxy => "haproxy",
            Scenario::Pingora => "pingora",
            Scenario::TcpRelay => "tcp-relay",
            Scenario::TokioRelay => "tokio-relay",
            Scenario::UringRelay => "uring-relay",
            Scenario::SidetrackEbpfTunnel => "sidetrack-ebpf-tunnel",
            Scenario::SidetrackEbpfNoYield => "sidetrack-ebpf-no-yield",
            Scenario::SidetrackEbpfMirror100 => "sidetrack-ebpf-mirror-100",
            Scenario::SidetrackEbpfMirror10 => "sidetrack-ebpf-mirror-10",
            Scenario::SidetrackEbpfAccessLog => "sidetrack-ebpf-access-log",
            Scenario::SidetrackEbpfCapture => "sidetrack-ebpf-capture",
            Scenario::SidetrackEbpfNoDashboard => "sidetrack-ebpf-no-dashboard",
            Scenario::BaselineExplicit => "baseline-explicit",
            Scenario::BaselineEbpf => "baseline-ebpf",
        }
    }

    /// The scenarios the wider phases (new connections, many connections,
    /// two workers) run against: the limit, Sidetrack's modes and the
    /// peers. The feature scenarios (mirrors, logs, capture) and the floors
    /// answer other questions.
    pub fn is_wide(self) -> bool {
        matches!(
            self,
            Scenario::Direct
                | Scenario::SidetrackExplicit
                | Scenario::SidetrackIptables
                | Scenario::SidetrackEbpf
                | Scenario::Nginx
                | Scenario::Haproxy
                | Scenario::Pingora
                | Scenario::BaselineExplicit
                | Scenario::BaselineEbpf
        )
    }

    /// Whether it runs with two workers (the relays have one thread).
    pub fn has_workers(self) -> bool {
        self.is_wide()
    }

    /// A byte pump rather than an HTTP proxy.
    fn is_relay(self) -> bool {
        matches!(
            self,
            Scenario::TcpRelay | Scenario::TokioRelay | Scenario::UringRelay
        )
    }

    fn sidetrack_mode(self) -> Option<&'static str> {
        match self {
            Scenario::SidetrackExplicit | Scenario::BaselineExplicit => Some("none"),
            Scenario::SidetrackIptables => Some("iptables"),
            Scenario::SidetrackEbpf
            | Scenario::SidetrackEbpfTunnel
            | Scenario::SidetrackEbpfNoYield
            | Scenario::SidetrackEbpfMirror100
            | Scenario::SidetrackEbpfMirror10
            | Scenario::SidetrackEbpfAccessLog
            | Scenario::SidetrackEbpfCapture
            | Scenario::SidetrackEbpfNoDashboard
            | Scenario::BaselineEbpf => Some("ebpf"),
            _ => None,
        }
    }
}

/// The programs the bench runs.
#[derive(Clone, Debug)]
pub struct Bins {
    pub sidetrack: PathBuf,
    /// The xtask binary whose `app` subcommand runs the server and the load.
    pub xtask: PathBuf,
    /// `--baseline`: the baseline revision's `sidetrack`.
    pub baseline: Option<PathBuf>,
    /// `pingora-peer`, when the run has the `pingora` scenario.
    pub pingora: Option<PathBuf>,
}

/// How a proxy is started beyond its scenario's defaults.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    /// Sidetrack's `limits.splice_threshold_bytes` (`None`: its default).
    pub splice_threshold: Option<u64>,
    /// Worker processes or threads (1 everywhere but the two-worker phase).
    pub workers: usize,
}

impl Default for Variant {
    fn default() -> Variant {
        Variant {
            splice_threshold: None,
            workers: 1,
        }
    }
}

/// The node, its two pods, the server, and the scratch directory. Dropping
/// it stops everything and removes the directory (the node then tears
/// itself down).
pub struct Bed {
    pub client: Pod,
    pub server: Pod,
    pub bins: Bins,
    pub dir: PathBuf,
    proxy_cgroup: PathBuf,
    cpu_cgroups: Option<CpuCgroups>,
    server_child: Option<Child>,
    // Last: dropped after the processes are gone.
    pub node: Node,
}

impl Bed {
    /// Sidetrack's /metrics text in eBPF mode (`None` for other scenarios or
    /// when the admin port does not answer).
    pub fn proxy_metrics(&self, scenario: Scenario) -> Option<String> {
        if scenario.sidetrack_mode() != Some("ebpf") {
            return None;
        }
        let admin = SocketAddr::from((self.node.ip(), SIDETRACK_ADMIN_PORT));
        match http_get(admin, "/metrics") {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// `pod_cgroups`: also a CPU cgroup for each pod and the proxy (see
    /// [`Bed::own_cpu_cgroups`]).
    pub fn start(bins: Bins, pod_cgroups: bool) -> Result<Bed> {
        let mut node = Node::new("bench")?;
        let client = node.add_pod("client")?;
        let server = node.add_pod("server")?;
        let cpu_cgroups = if pod_cgroups {
            Some(CpuCgroups {
                client: node.cpu_cgroup("client")?,
                server: node.cpu_cgroup("server")?,
                proxy: node.cpu_cgroup("proxy")?,
                shared: own_cpu_cgroup()?,
            })
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("sidetrack-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let proxy_cgroup = node.cgroup_path().join("proxy");
        let mut bed = Bed {
            client,
            server,
            bins,
            dir,
            proxy_cgroup,
            cpu_cgroups,
            server_child: None,
            node,
        };
        fs::create_dir(&bed.proxy_cgroup).context("make the proxies' cgroup")?;
        let mut cmd = bed.server.command(&bed.bins.xtask);
        cmd.args(["app", "bench-server", &format!("0.0.0.0:{SERVER_PORT}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        bed.server_child = Some(cmd.spawn().context("start the bench server")?);
        wait_listening(SocketAddr::from((bed.server.ip(), SERVER_PORT)))?;
        Ok(bed)
    }

    /// Where `--pod-cgroups` puts the client, server and proxy (the
    /// directory of the three in the v1 cpu hierarchy).
    pub fn cpu_cgroups_dir(&self) -> Option<PathBuf> {
        Some(self.cpu_cgroups.as_ref()?.client.parent()?.to_owned())
    }

    pub fn server_pid(&self) -> u32 {
        self.server_child.as_ref().map_or(0, Child::id)
    }

    pub fn service_addr(&self) -> SocketAddrV4 {
        let [a, b, _, _] = SERVICE_RANGE.0.octets();
        SocketAddrV4::new(Ipv4Addr::new(a, b, 0, 1), SERVICE_PORT)
    }

    /// Where the client sends its requests in `scenario`.
    pub fn target(&self, scenario: Scenario) -> SocketAddr {
        let node = self.node.ip();
        SocketAddr::V4(match scenario {
            Scenario::Direct | Scenario::SidetrackEbpfTunnel => {
                SocketAddrV4::new(self.server.ip(), SERVER_PORT)
            }
            Scenario::SidetrackExplicit | Scenario::BaselineExplicit => {
                SocketAddrV4::new(node, SIDETRACK_PORT)
            }
            Scenario::SidetrackIptables
            | Scenario::SidetrackEbpf
            | Scenario::SidetrackEbpfNoYield
            | Scenario::SidetrackEbpfMirror100
            | Scenario::SidetrackEbpfMirror10
            | Scenario::SidetrackEbpfAccessLog
            | Scenario::SidetrackEbpfCapture
            | Scenario::SidetrackEbpfNoDashboard
            | Scenario::BaselineEbpf => self.service_addr(),
            Scenario::Nginx => SocketAddrV4::new(node, NGINX_PORT),
            Scenario::Haproxy => SocketAddrV4::new(node, HAPROXY_PORT),
            Scenario::Pingora => SocketAddrV4::new(node, PINGORA_PORT),
            Scenario::TcpRelay | Scenario::TokioRelay | Scenario::UringRelay => {
                SocketAddrV4::new(node, RELAY_PORT)
            }
        })
    }

    /// Starts the scenario's proxy (none for `direct`) and waits until it
    /// answers.
    pub fn start_proxy(&self, scenario: Scenario, variant: Variant) -> Result<Proxy> {
        let name = scenario.name();
        let log_path = self.dir.join(format!("{name}.log"));
        let cmd = match scenario {
            Scenario::Direct => {
                return Ok(Proxy {
                    child: None,
                    cgroup: self.proxy_cgroup.clone(),
                    log: log_path,
                    name,
                });
            }
            Scenario::Nginx => {
                let conf = self.write_nginx_conf(variant.workers)?;
                let mut c = Command::new("nginx");
                c.arg("-c").arg(conf).arg("-p").arg(self.dir.join("nginx"));
                c.arg("-e").arg(&log_path);
                c
            }
            Scenario::Haproxy => {
                let conf = self.dir.join("haproxy.cfg");
                fs::write(&conf, self.haproxy_conf(variant.workers))?;
                let mut c = Command::new("haproxy");
                // -db: foreground, one process, no daemon.
                c.arg("-db").arg("-f").arg(conf);
                c
            }
            Scenario::Pingora => {
                let conf = self.dir.join("pingora.yaml");
                fs::write(&conf, self.pingora_conf(variant.workers))?;
                let bin = self
                    .bins
                    .pingora
                    .as_ref()
                    .context("pingora-peer was not built")?;
                let mut c = Command::new(bin);
                c.arg(self.target(scenario).to_string())
                    .arg(self.upstream().to_string())
                    .arg(conf);
                c
            }
            Scenario::TcpRelay | Scenario::TokioRelay | Scenario::UringRelay => {
                let app = match scenario {
                    Scenario::TokioRelay => "tokio-relay",
                    Scenario::UringRelay => "uring-relay",
                    _ => "relay",
                };
                let mut c = Command::new(&self.bins.xtask);
                c.args(["app", app])
                    .arg(self.target(scenario).to_string())
                    .arg(SocketAddrV4::new(self.server.ip(), SERVER_PORT).to_string());
                c
            }
            _ => {
                let conf = self.dir.join(format!("{name}.yaml"));
                fs::write(&conf, self.sidetrack_conf(scenario, variant))?;
                let bin = if scenario.is_baseline() {
                    self.bins
                        .baseline
                        .as_ref()
                        .context("no --baseline binary")?
                } else {
                    &self.bins.sidetrack
                };
                let mut c = Command::new(bin);
                c.arg("run")
                    .arg("--config")
                    .arg(conf)
                    .env("NO_COLOR", "1")
                    .env("RUST_LOG", "warn");
                c
            }
        };
        super::ports::wait_free(&self.listens(scenario), PORT_WAIT)?;
        let mut proxy = self.spawn_in_proxy_cgroup(name, cmd, log_path)?;
        let ready = match scenario {
            _ if scenario.sidetrack_mode().is_some() => {
                SocketAddr::from((self.node.ip(), SIDETRACK_ADMIN_PORT))
            }
            _ => self.target(scenario),
        };
        let path = if scenario.sidetrack_mode().is_some() {
            "/ready"
        } else {
            "/"
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = &mut proxy.child
                && let Some(status) = child.try_wait()?
            {
                bail!("{name} exited ({status}):\n{}", proxy.log_text());
            }
            // The relay passes `Connection: close` to a server that keeps
            // the connection anyway: for it, accepting is being ready (the
            // warm-up then proves the path).
            let up = if scenario.is_relay() {
                TcpStream::connect_timeout(&ready, Duration::from_millis(200)).is_ok()
            } else {
                http_get(ready, path).is_ok_and(|(status, _)| status == 200)
            };
            if up {
                return Ok(proxy);
            }
            if Instant::now() > deadline {
                bail!("{name} did not become ready:\n{}", proxy.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `cmd` as a proxy of the HTTP/2 rows (nginx, haproxy) in the
    /// proxies' cgroup, logging to `<name>-h2.log`, and waits until it
    /// accepts on `ready`.
    pub fn spawn_h2_proxy(
        &self,
        name: &'static str,
        cmd: Command,
        ready: SocketAddr,
    ) -> Result<Proxy> {
        let log_path = self.dir.join(format!("{name}-h2.log"));
        super::ports::wait_free(&[ready], PORT_WAIT)?;
        let mut proxy = self.spawn_in_proxy_cgroup(name, cmd, log_path)?;
        if let Err(e) = wait_listening(ready) {
            let _ = proxy.stop();
            bail!("{name}: {e}:\n{}", proxy.log_text());
        }
        Ok(proxy)
    }

    /// The addresses `scenario`'s proxy listens on (none for `direct`).
    fn listens(&self, scenario: Scenario) -> Vec<SocketAddr> {
        match scenario {
            Scenario::Direct => Vec::new(),
            _ if scenario.sidetrack_mode().is_some() => vec![
                SocketAddr::from((self.node.ip(), SIDETRACK_PORT)),
                SocketAddr::from((self.node.ip(), SIDETRACK_ADMIN_PORT)),
            ],
            _ => vec![self.target(scenario)],
        }
    }

    /// Starts `cmd` in the proxies' cgroup, its output to `log_path`.
    fn spawn_in_proxy_cgroup(
        &self,
        name: &'static str,
        mut cmd: Command,
        log_path: PathBuf,
    ) -> Result<Proxy> {
        let log = fs::File::create(&log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        node_process(&mut cmd, &self.proxy_cgroup)?;
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        Ok(Proxy {
            child: Some(child),
            cgroup: self.proxy_cgroup.clone(),
            log: log_path,
            name,
        })
    }

    /// nginx for the HTTP/2 rows: h2c with prior knowledge in, and out
    /// through `grpc_pass` (nginx's only HTTP/2 upstream), one worker.
    pub fn write_nginx_h2_conf(&self, listen: SocketAddrV4, up: SocketAddrV4) -> Result<PathBuf> {
        self.write_nginx(
            "nginx-h2",
            1,
            "http2_max_requests 1000000;\n  http2_max_concurrent_streams 128;\n  ",
            up,
            &format!(
                "listen {listen} http2;\n    location / {{\n      grpc_pass grpc://bench;\n    }}"
            ),
        )
    }

    /// haproxy for the HTTP/2 rows: h2c in and out, one thread.
    pub fn haproxy_h2_conf(&self, listen: SocketAddrV4, up: SocketAddrV4) -> String {
        format!(
            "global\n  nbthread 1\n  maxconn 4096\n  pidfile {pid}\n\
             defaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 60s\n\
             frontend fe\n  bind {listen} proto h2\n  default_backend be\n\
             backend be\n  server s1 {up} proto h2\n",
            pid = self.dir.join("haproxy-h2.pid").display(),
        )
    }

    fn upstream(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.server.ip(), SERVER_PORT)
    }

    fn sidetrack_conf(&self, scenario: Scenario, variant: Variant) -> String {
        let (svc, svc_len) = SERVICE_RANGE;
        let node = self.node.ip();
        let workers = variant.workers;
        let mut conf = format!(
            "listen: {node}:{SIDETRACK_PORT}\nadmin: {node}:{SIDETRACK_ADMIN_PORT}\nworkers: {workers}\n\
             intercept: {mode}\ndtab: |\n  /svc/bench => /$/inet/{ip}/{port};\n  /svc/bench-h2 => /$/inet/{ip}/{h2port};\n\
             http2:\n  h2_names: [/svc/bench-h2]\n\
             interception:\n  cidrs: [{svc}/{svc_len}{server}]\n  cgroup: {cgroup}\n  mark: {PROXY_MARK}\n\
             shutdown_grace_ms: 2000\n",
            mode = scenario.sidetrack_mode().unwrap_or("none"),
            // The tunnel scenario's client calls the server's own address.
            server = if scenario == Scenario::SidetrackEbpfTunnel {
                format!(", {}/32", self.server.ip())
            } else {
                String::new()
            },
            ip = self.server.ip(),
            port = SERVER_PORT,
            h2port = super::h2::H2_SERVER_PORT,
            cgroup = self.node.cgroup_path().display(),
        );
        // Room for the many-connections phase and its server connections
        // (the default is 10,000).
        conf.push_str(&format!("limits:\n  max_connections: {MAX_CONNECTIONS}\n"));
        if let Some(t) = variant.splice_threshold {
            conf.push_str(&format!("  splice_threshold_bytes: {t}\n"));
        }
        if scenario == Scenario::SidetrackEbpfNoYield {
            conf.push_str("yield_before_wait: false\n");
        }
        // The candidate is the same server under another name: as fast as
        // the live version, so the numbers are the copies' own cost.
        let percent = match scenario {
            Scenario::SidetrackEbpfMirror100 => Some(100),
            Scenario::SidetrackEbpfMirror10 => Some(10),
            _ => None,
        };
        if scenario == Scenario::SidetrackEbpfAccessLog {
            conf.push_str(&format!(
                "access_log:\n  enabled: true\n  path: {}\n",
                self.dir.join("access.log").display()
            ));
        }
        if scenario == Scenario::SidetrackEbpfCapture {
            conf.push_str(&format!(
                "capture:\n  enabled: true\n  dir: {}\n  names: [/svc/bench]\n",
                self.dir.join("capture").display()
            ));
        }
        if scenario == Scenario::SidetrackEbpfNoDashboard {
            conf.push_str("dashboard:\n  enabled: false\n");
        }
        if let Some(percent) = percent {
            conf = conf.replacen(
                "dtab: |\n",
                &format!(
                    "dtab: |\n  /srv/candidate => /$/inet/{ip}/{SERVER_PORT};\n",
                    ip = self.server.ip()
                ),
                1,
            );
            conf.push_str(&format!(
                "mirrors:\n  - {{name: /svc/bench, to: /srv/candidate, percent: {percent}}}\n"
            ));
        }
        conf
    }

    /// One worker (or `workers`), keep-alive both ways (64 idle upstream
    /// connections, like Sidetrack's pool), no logging, no buffering to
    /// disk (bodies stream both ways: request buffering off, no temp file),
    /// room for 16k connections.
    fn write_nginx_conf(&self, workers: usize) -> Result<PathBuf> {
        self.write_nginx(
            "nginx",
            workers,
            "",
            self.upstream(),
            &format!(
                "listen {node}:{NGINX_PORT};\n    location / {{\n      proxy_pass http://bench;\n      \
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}",
                node = self.node.ip()
            ),
        )
    }

    /// `<file>.conf`: `workers` workers, keep-alive to the upstream `bench`
    /// at `up`, no logging and no buffering to disk, `http_extra` in the
    /// http block and `server` as the server block's body.
    fn write_nginx(
        &self,
        file: &str,
        workers: usize,
        http_extra: &str,
        up: SocketAddrV4,
        server: &str,
    ) -> Result<PathBuf> {
        let prefix = self.dir.join("nginx");
        fs::create_dir_all(prefix.join("tmp"))?;
        let tmp = prefix.join("tmp");
        let tmp = tmp.display();
        let conf = format!(
            "worker_processes {workers};\nworker_rlimit_nofile {nofile};\ndaemon off;\npid {pid};\nerror_log {log} warn;\n\
             events {{ worker_connections {MAX_CONNECTIONS}; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n  \
             fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n  \
             keepalive_requests 1000000;\n  keepalive_timeout 60s;\n  {http_extra}tcp_nodelay on;\n  \
             client_max_body_size 0;\n  proxy_request_buffering off;\n  proxy_max_temp_file_size 0;\n  \
             upstream bench {{\n    server {up};\n    keepalive 64;\n    keepalive_requests 1000000;\n  }}\n  \
             server {{\n    {server}\n  }}\n}}\n",
            pid = self.dir.join(format!("{file}.pid")).display(),
            nofile = NGINX_NOFILE,
            log = self.dir.join(format!("{file}-error.log")).display(),
        );
        let path = self.dir.join(format!("{file}.conf"));
        fs::write(&path, conf)?;
        Ok(path)
    }

    /// One thread (or `workers`), HTTP mode with keep-alive both ways and
    /// server-side connection reuse, no logging, room for 9,950 client
    /// connections (see [`HAPROXY_MAXCONN`]).
    fn haproxy_conf(&self, workers: usize) -> String {
        format!(
            "global\n  nbthread {workers}\n  maxconn {HAPROXY_MAXCONN}\n  pidfile {pid}\n\
             defaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 60s\n\
             frontend fe\n  bind {node}:{HAPROXY_PORT}\n  default_backend be\n\
             backend be\n  server s1 {up}\n",
            pid = self.dir.join("haproxy.pid").display(),
            node = self.node.ip(),
            up = self.upstream(),
        )
    }

    /// Pingora's server file: one worker thread (or `workers`) with no work
    /// stealing, an upstream keep-alive pool of 64 like nginx's, a quick
    /// exit on SIGTERM, its pid file and upgrade socket in the bench's
    /// directory.
    fn pingora_conf(&self, workers: usize) -> String {
        format!(
            "---\nversion: 1\nthreads: {workers}\nwork_stealing: false\nupstream_keepalive_pool_size: 64\n\
             grace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\npid_file: {pid}\nupgrade_sock: {sock}\n",
            pid = self.dir.join("pingora.pid").display(),
            sock = self.dir.join("pingora-upgrade.sock").display(),
        )
    }

    /// Runs the load generator in the client pod against `scenario` while
    /// sampling `proxy`'s memory; returns its result, the peak resident set
    /// seen meanwhile (kB), and (`idle_conns`) the proxy's CPU time when the
    /// idle connections were all up.
    pub fn load(
        &self,
        scenario: Scenario,
        proxy: &Proxy,
        args: &LoadArgs,
    ) -> Result<(loadgen::LoadResult, u64, Option<proc::Cpu>)> {
        let out_path = self.dir.join("loadgen.json");
        let err_path = self.dir.join("loadgen.err");
        let mut cmd = self.client.command(&self.bins.xtask);
        cmd.args(["app", "loadgen", "--addr"])
            .arg(self.target(scenario).to_string())
            .args(["--path", &args.path])
            .args(["--conns", &args.conns.to_string()])
            .args(["--secs", &args.secs.to_string()])
            .args(["--max-requests", &args.max_requests.to_string()])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?);
        if let Some(rate) = args.rate {
            cmd.args(["--rate", &rate.to_string()]);
        }
        if let Some(cpu) = args.cpu {
            cmd.args(["--cpu", &cpu.to_string()]);
        }
        if let Some(p) = scenario.preamble() {
            cmd.args(["--preamble", p]);
        }
        if args.close {
            cmd.arg("--close");
        }
        // The client pod's own namespace: the load generator may widen its
        // ephemeral ports there.
        cmd.arg("--own-netns");
        if args.idle_conns > 0 {
            cmd.args(["--idle-conns", &args.idle_conns.to_string()]);
        }
        if args.upload > 0 {
            cmd.args(["--upload", &args.upload.to_string()]);
        }
        if args.pod_cgroups {
            node_process(&mut cmd, &self.cpu_cgroups()?.client)?;
        }
        let mut child = cmd.spawn().context("start the load generator")?;
        let limit = Instant::now() + Duration::from_secs_f64(args.secs + 60.0);
        let mut peak_rss = 0;
        let mut ready_cpu = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            peak_rss = peak_rss.max(proxy.memory().rss_kb);
            if args.idle_conns > 0
                && ready_cpu.is_none()
                && fs::read_to_string(&err_path).is_ok_and(|t| t.contains("ready"))
            {
                ready_cpu = proxy.cpu();
            }
            if Instant::now() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the load generator ran past its time bound ({scenario:?})");
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        if !status.success() {
            bail!(
                "loadgen against {} failed ({status}): {stderr}\n{}",
                scenario.name(),
                proxy.log_text()
            );
        }
        let text = fs::read_to_string(&out_path)?;
        let result =
            serde_json::from_str(&text).with_context(|| format!("loadgen printed {text:?}"))?;
        Ok((result, peak_rss, ready_cpu))
    }

    fn cpu_cgroups(&self) -> Result<&CpuCgroups> {
        self.cpu_cgroups
            .as_ref()
            .context("the test bed has no CPU cgroups (--pod-cgroups)")
    }

    /// Moves the server and the proxy into CPU cgroups of their own (the
    /// load generator starts in the client's: `LoadArgs::pod_cgroups`), or
    /// back into the one they share. Kubernetes gives every pod its own,
    /// and the scheduler picks a group before a task in it: a task's
    /// `sched_yield` reaches only the tasks of its own group.
    pub fn own_cpu_cgroups(&self, proxy: &Proxy, own: bool) -> Result<()> {
        let g = self.cpu_cgroups()?;
        let (server, proxies) = if own {
            (&g.server, &g.proxy)
        } else {
            (&g.shared, &g.shared)
        };
        let mut moves = vec![(server, self.server_pid())];
        moves.extend(proxy.pids().into_iter().map(|pid| (proxies, pid)));
        for (cgroup, pid) in moves {
            // A v1 cgroup.procs takes a pid and moves all its threads.
            fs::write(cgroup.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("move {pid} into {}", cgroup.display()))?;
        }
        Ok(())
    }

    /// Pins the server's and the proxy's threads to `cpu`, or frees them.
    pub fn pin(&self, proxy: &Proxy, cpu: Option<usize>) -> Result<()> {
        let mut pids = proxy.pids();
        pids.push(self.server_pid());
        for pid in pids {
            for tid in proc::threads(pid) {
                // A thread may end meanwhile.
                let _ = loadgen::set_affinity(tid as i32, cpu);
            }
        }
        Ok(())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(mut child) = self.server_child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `--pod-cgroups`: a CPU cgroup each (v1 cpu hierarchy), and the one the
/// three share otherwise: the bench's own, where every child starts.
struct CpuCgroups {
    client: PathBuf,
    server: PathBuf,
    proxy: PathBuf,
    shared: PathBuf,
}

/// This process's cgroup in the v1 cpu hierarchy (`/proc/self/cgroup`'s
/// line for the `cpu` controller, alone or with `cpuacct`).
fn own_cpu_cgroup() -> Result<PathBuf> {
    let root = cpu_v1_root().context("no v1 cpu hierarchy at /sys/fs/cgroup/cpu")?;
    let text = fs::read_to_string("/proc/self/cgroup")?;
    let path = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers.split(',').any(|c| c == "cpu").then_some(path)
        })
        .context("/proc/self/cgroup has no cpu controller line")?;
    Ok(root.join(path.trim_start_matches('/')))
}

/// One load generator run.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    pub path: String,
    pub conns: usize,
    pub rate: Option<u64>,
    pub secs: f64,
    pub max_requests: u64,
    pub cpu: Option<usize>,
    /// The load generator starts in the client pod's own CPU cgroup (see
    /// [`Bed::own_cpu_cgroups`]).
    pub pod_cgroups: bool,
    /// A fresh connection per request, with `Connection: close`.
    pub close: bool,
    /// Connections held idle meanwhile (one request each first).
    pub idle_conns: usize,
    /// POST bodies of this many bytes.
    pub upload: u64,
}

impl LoadArgs {
    pub fn closed(conns: usize, secs: f64) -> LoadArgs {
        LoadArgs {
            path: "/".into(),
            conns,
            rate: None,
            secs,
            max_requests: 5_000_000,
            cpu: None,
            pod_cgroups: false,
            close: false,
            idle_conns: 0,
            upload: 0,
        }
    }

    pub fn open(rate: u64, conns: usize, secs: f64) -> LoadArgs {
        LoadArgs {
            rate: Some(rate),
            max_requests: (rate as f64 * secs).ceil() as u64 + 1,
            ..LoadArgs::closed(conns, secs)
        }
    }
}

/// A running proxy; stop it with [`Proxy::stop`] (dropping it stops it too).
pub struct Proxy {
    child: Option<Child>,
    cgroup: PathBuf,
    log: PathBuf,
    pub name: &'static str,
}

impl Proxy {
    /// Its processes (empty for `direct`).
    pub fn pids(&self) -> Vec<u32> {
        if self.child.is_none() {
            return Vec::new();
        }
        proc::cgroup_pids(&self.cgroup)
    }

    /// CPU seconds used so far by its processes; `None` for `direct`.
    /// The CPU time of its processes (`None` for `direct`).
    pub fn cpu(&self) -> Option<proc::Cpu> {
        self.child.as_ref()?;
        Some(
            self.pids()
                .into_iter()
                .map(proc::cpu)
                .fold(proc::Cpu::default(), |a, b| a + b),
        )
    }

    pub fn memory(&self) -> proc::Memory {
        self.pids()
            .into_iter()
            .map(proc::memory)
            .fold(proc::Memory::default(), |a, b| a + b)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (Sidetrack then removes its nftables rules or detaches its
    /// programs; nginx's master stops its worker), then waits until the
    /// cgroup is empty; SIGKILL after 15 s.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut clean = true;
        let mut diagnosis = String::new();
        loop {
            let exited = child.try_wait()?.is_some();
            if exited && proc::cgroup_pids(&self.cgroup).is_empty() {
                break;
            }
            if Instant::now() > deadline {
                clean = false;
                for pid in proc::cgroup_pids(&self.cgroup) {
                    for tid in proc::threads(pid) {
                        let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"));
                        let wchan = fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan"));
                        diagnosis.push_str(&format!(
                            "  {pid}/{tid}: {} wchan {}\n",
                            stat.unwrap_or_default().trim(),
                            wchan.unwrap_or_default()
                        ));
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
                kill_cgroup(&self.cgroup);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !clean {
            bail!(
                "{} did not stop within 15 s of SIGTERM; its threads were:\n{diagnosis}log:\n{}",
                self.name,
                self.log_text()
            );
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.child.is_some() && self.stop().is_err() {
            kill_cgroup(&self.cgroup);
        }
    }
}

fn kill_cgroup(cgroup: &Path) {
    let _ = fs::write(cgroup.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proc::cgroup_pids(cgroup).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on {addr}")
}
