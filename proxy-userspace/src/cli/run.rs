//! `sidetrack run`: start the proxy.
//!
//! Settings come from defaults, then `--config FILE`, then flags. The config
//! file and the dtab file are watched; a changed dtab or namer setting
//! applies without a restart, and a file that no longer parses is refused
//! with a log line while the old settings stay. SIGTERM or SIGINT stops
//! accepting, lets in-flight requests finish within the grace period, and
//! exits 0.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::SystemTime,
};

use clap::Args;
use tokio::sync::watch;

use std::net::IpAddr;

use crate::{
    admin,
    config::{IdentifierKind, InterceptMode, Settings, ms, parse_cidr},
    dtab::{Dtab, Namers},
    intercept::{EbpfDataPath, EbpfOptions, InterceptSpec, OrigDst, cgroup, nft::NftRules},
    namer::fs::{self, FsNamer},
    observe::metrics::{ExtraCounters, Metrics},
    proxy::{self, ProxyConfig, Shared},
    route::{Identifier, Router},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address the proxy listens on [default: 0.0.0.0:4140].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address of the admin server (/metrics, /delegator) [default: 127.0.0.1:9990].
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// The base dtab, inline.
    #[arg(long)]
    pub dtab: Option<String>,
    /// A file holding the base dtab (watched for changes).
    #[arg(long)]
    pub dtab_file: Option<PathBuf>,
    /// Directory of the file namer: /#/io.l5d.fs/NAME reads DIR/NAME.
    #[arg(long)]
    pub fs_dir: Option<PathBuf>,
    /// YAML settings file (watched for changes); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Worker threads of the data path [default: 1].
    #[arg(long)]
    pub workers: Option<usize>,
    /// How traffic reaches the proxy [default: none].
    #[arg(long, value_enum)]
    pub intercept: Option<InterceptMode>,
    /// How a request becomes a logical name [default: io.l5d.header.token].
    #[arg(long, value_enum)]
    pub identifier: Option<IdentifierKind>,
}

impl RunArgs {
    /// The settings: the file's (or defaults), with the flags on top.
    fn settings(&self) -> Result<Settings, String> {
        let mut s = match &self.config {
            Some(path) => Settings::load(path)?,
            None => Settings::default(),
        };
        self.apply(&mut s);
        s.validate()?;
        Ok(s)
    }

    fn apply(&self, s: &mut Settings) {
        if let Some(v) = self.listen {
            s.listen = v;
        }
        if let Some(v) = self.admin {
            s.admin = v;
        }
        if let Some(v) = &self.dtab {
            s.dtab = v.clone();
        }
        if let Some(v) = &self.dtab_file {
            s.dtab_file = Some(v.clone());
        }
        if let Some(v) = &self.fs_dir {
            s.fs_dir = Some(v.clone());
        }
        if let Some(v) = self.workers {
            s.workers = v;
        }
        if let Some(v) = self.intercept {
            s.intercept = v;
        }
        if let Some(v) = self.identifier {
            s.identifier = v;
        }
    }

    pub fn run(self) -> ExitCode {
        match self.start() {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("sidetrack run: {e}");
                ExitCode::from(2)
            }
        }
    }

    fn start(self) -> Result<ExitCode, String> {
        // Signals are caught from the start: a SIGTERM that comes while
        // interception is being set up must still lead to the cleanup.
        let signals = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the signal runtime: {e}"))?;
        let mut stop_signals = {
            let _entered = signals.enter();
            StopSignals::new().map_err(|e| format!("catching SIGTERM and SIGINT: {e}"))?
        };
        let settings = self.settings()?;
        let base = parse_base(&settings)?;
        let generation = Arc::new(AtomicU64::new(0));
        let fs_namer = settings
            .fs_dir
            .clone()
            .map(|dir| FsNamer::start(dir, ms(settings.watch_interval_ms), generation.clone()));
        let metrics = Arc::new(Metrics::new(settings.max_route_series));
        let router = Arc::new(Router::new(
            base,
            namers(&fs_namer),
            settings.bind_cache_capacity,
            metrics.clone(),
            generation,
        ));
        metrics.add_extra(Arc::new(CacheCounters(router.clone())));

        raise_fd_limit(settings.limits.max_connections);
        let workers = settings.workers.max(1);
        let listeners = bind_workers(settings.listen, workers)
            .map_err(|e| format!("listening on {}: {e}", settings.listen))?;
        let admin_listener = std::net::TcpListener::bind(settings.admin)
            .map_err(|e| format!("admin listener on {}: {e}", settings.admin))?;
        let listen_addr = listeners[0].local_addr().map_err(|e| e.to_string())?;
        let ready = Arc::new(AtomicBool::new(false));
        let admin_addr = admin::spawn(
            admin_listener,
            admin::Admin {
                metrics: metrics.clone(),
                router: router.clone(),
                ready: ready.clone(),
            },
        )
        .map_err(|e| format!("admin server: {e}"))?;

        let mut cfg = ProxyConfig::from_settings(&settings);
        // Each worker accepts on its own listener, so each takes its share.
        cfg.max_connections = cfg.max_connections.div_ceil(workers);
        let (orig_dst, interception) = start_interception(&settings, &mut cfg, &metrics)?;
        let shared = Arc::new(Shared {
            cfg,
            router: router.clone(),
            metrics,
            identifier: Identifier::new(settings.identifier, &settings.dst_prefix),
            orig_dst,
        });
        let grace = ms(settings.shutdown_grace_ms);
        let yield_before_wait = settings.yield_before_wait;
        let (stop_tx, stop_rx) = watch::channel(false);

        let cpus = if settings.pin_workers {
            allowed_cpus().map_err(|e| format!("pin_workers: {e}"))?
        } else {
            Vec::new()
        };
        spawn_reloader(self, settings, router);

        // One single-threaded runtime per worker, each with its own
        // SO_REUSEPORT listener: the kernel spreads connections, and a
        // connection never leaves its thread (no work stealing, no
        // cross-thread wake-ups on the data path).
        let mut handles = Vec::with_capacity(workers);
        // Each worker says when it ends, however it ends: one that stops
        // before it is told to (it could not start its loop or its
        // deadline sweeper, or it panicked) stops the proxy, rather than
        // leave it ready with a listener nobody serves.
        let (exited_tx, mut exited_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (shared, stop_rx) = (shared.clone(), stop_rx.clone());
            let exited = WorkerExit(i, exited_tx.clone());
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("sidetrack-worker-{i}"))
                .spawn(move || -> Result<bool, String> {
                    let _exited = exited;
                    proxy::run_worker(listener, shared, stop_rx, grace, yield_before_wait)
                        .map_err(|e| format!("starting worker {i}: {e}"))
                })
                .map_err(|e| format!("starting worker {i}: {e}"))?;
            // Pinned from here, before the proxy says it is ready.
            if let Some(cpu) = cpu {
                use std::os::unix::thread::JoinHandleExt;
                pin(handle.as_pthread_t(), cpu)
                    .map_err(|e| format!("pinning worker {i} to CPU {cpu}: {e}"))?;
            }
            handles.push(handle);
        }
        // Only the workers hold senders now: the channel closes when the
        // last one ends.
        drop(exited_tx);
        // Ready before the line that tells the world where to connect.
        ready.store(true, Ordering::Release);
        tracing::info!(
            "listening on http://{listen_addr}, admin on http://{admin_addr}, {workers} worker(s)"
        );
        let worker_died = signals.block_on(async {
            tokio::select! {
                _ = stop_signals.recv() => None,
                Some(i) = exited_rx.recv() => Some(i),
            }
        });
        match worker_died {
            None => tracing::info!("shutdown requested"),
            Some(i) => tracing::error!(
                worker = i,
                "a worker stopped on its own; shutting the proxy down"
            ),
        }
        ready.store(false, Ordering::Release);
        // Interception first: from here new connects on the node go to
        // their destinations, and only then do the listeners close.
        interception.stop();
        let _ = stop_tx.send(true);
        // Each worker reports its end on the channel, so the wait needs no
        // thread of its own (which, with the machine out of threads, could
        // not be had), and a second signal can end it.
        let mut left = handles.len() - usize::from(worker_died.is_some());
        let all_ended = signals.block_on(async {
            tokio::select! {
                _ = async {
                    while left > 0 && exited_rx.recv().await.is_some() {
                        left -= 1;
                    }
                } => true,
                _ = stop_signals.recv() => false,
            }
        });
        let drained = if all_ended {
            let mut drained = Ok(true);
            for handle in handles {
                let worker = handle
                    .join()
                    .unwrap_or_else(|_| Err("a worker panicked".to_string()));
                drained = match (drained, worker) {
                    (Ok(a), Ok(b)) => Ok(a && b),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                };
            }
            drained?
        } else {
            tracing::warn!("second stop signal: exiting without waiting for the drain");
            false
        };
        // Dropped here, after the workers: the programs detach or the rules go.
        drop(interception);
        Ok(if drained && worker_died.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

/// What keeps interception in place while the proxy runs: dropping it
/// detaches the eBPF programs or deletes the nftables rules.
enum Interception {
    None,
    Ebpf(Arc<EbpfDataPath>),
    Nft(NftRules),
}

impl Interception {
    /// Stops steering new connections to the proxy; those already steered
    /// keep working (the sockmap shortcut stays, conntrack keeps its NAT)
    /// until this is dropped.
    fn stop(&self) {
        let stopped = match self {
            Interception::None => return,
            Interception::Ebpf(datapath) => datapath.stop_intercepting().map_err(|e| e.to_string()),
            Interception::Nft(rules) => rules.stop_intercepting(),
        };
        match stopped {
            Ok(()) => tracing::info!("interception off: new connections go to their destinations"),
            Err(e) => tracing::warn!("could not switch interception off before draining: {e}"),
        }
    }
}

/// Sets up the `--intercept` mode: the eBPF programs or the nftables rules,
/// the proxy's own-socket mark and source address, and where original
/// destinations are looked up.
fn start_interception(
    s: &Settings,
    cfg: &mut ProxyConfig,
    metrics: &Arc<Metrics>,
) -> Result<(Option<OrigDst>, Interception), String> {
    if s.intercept == InterceptMode::None {
        return Ok((None, Interception::None));
    }
    let proxy = match s.listen {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => a,
        other => {
            return Err(format!(
                "--intercept {:?} needs --listen with the node's own IPv4 address (not {other}): \
                 intercepted connections are sent there",
                s.intercept
            ));
        }
    };
    let i = &s.interception;
    let cidrs = i
        .cidrs
        .iter()
        .map(|c| parse_cidr(c))
        .collect::<Result<Vec<_>, _>>()?;
    cfg.pool.mark = Some(i.mark);
    match s.intercept {
        InterceptMode::Ebpf => {
            let cgroup = match &i.cgroup {
                Some(c) => c.clone(),
                None => cgroup::default_attach_point().map_err(|e| format!("cgroup v2: {e}"))?,
            };
            let spec = InterceptSpec {
                proxy,
                cidrs,
                ports: i.ports.clone(),
                exclude_ports: i.exclude_ports.clone(),
                mark: i.mark,
            };
            let mut datapath = EbpfDataPath::load(&EbpfOptions {
                cgroup,
                forward_logs: true,
                intercept: Some(spec),
            })
            .map_err(|e| format!("eBPF interception: {e}"))?;
            // Loading parsed the kernel's BTF and the object (megabytes,
            // freed again), and glibc keeps freed heap pages: hand them
            // back, about 2 MB of the idle proxy's RSS.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim has no preconditions.
            unsafe {
                libc::malloc_trim(0)
            };
            let map = datapath
                .take_orig_dst()
                .ok_or("the eBPF object has no original-destination map")?;
            let datapath = Arc::new(datapath);
            metrics.add_extra(Arc::new(EbpfCounters(datapath.clone())));
            // Backend sockets come from the node address, so sockops files
            // proxy-to-pod connections; their bytes arrive through the
            // SOCKHASH, which splice(2) cannot read.
            cfg.pool.source = Some(IpAddr::V4(*proxy.ip()));
            cfg.splice_threshold = u64::MAX;
            Ok((Some(OrigDst::Ebpf(map)), Interception::Ebpf(datapath)))
        }
        InterceptMode::Iptables => {
            let rules = NftRules::install(proxy, &cidrs, &i.ports, &i.exclude_ports, i.mark)?;
            Ok((Some(OrigDst::Conntrack), Interception::Nft(rules)))
        }
        InterceptMode::None => unreachable!("handled above"),
    }
}

struct EbpfCounters(Arc<EbpfDataPath>);

impl ExtraCounters for EbpfCounters {
    fn counters(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        if let Ok(counters) = self.0.counters() {
            for (counter, value) in counters.iter() {
                out.push((
                    counter.metric_name(),
                    "eBPF data path counter (summed over CPUs)",
                    value,
                ));
            }
        }
    }
}

struct CacheCounters(Arc<Router>);

impl ExtraCounters for CacheCounters {
    fn counters(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        let s = self.0.cache_stats();
        out.push((
            "dtab_cache_hits",
            "Routes found in the binding cache",
            s.hits,
        ));
        out.push(("dtab_cache_misses", "Routes bound afresh", s.misses));
        out.push((
            "dtab_cache_evictions",
            "Routes evicted from the full binding cache",
            s.evictions,
        ));
    }
}

fn parse_base(s: &Settings) -> Result<Dtab, String> {
    let text = s.base_dtab_text()?;
    Dtab::parse(&text).map_err(|e| format!("invalid base dtab: {e}"))
}

fn namers(fs: &Option<Arc<FsNamer>>) -> Namers {
    let mut namers = Namers::default();
    if let Some(fs) = fs {
        namers = namers.with(fs::KIND, fs.clone());
    }
    namers
}

/// Raises the soft limit on open descriptors to the hard limit (the soft
/// one is often 1024, and each proxied connection takes two), and says so
/// when even the hard limit is short of `max_connections` clients with a
/// backend connection each.
fn raise_fd_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a valid rlimit struct.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if !raised {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not raise the open-file limit");
        return;
    }
    let want = 2 * max_connections as u64 + 64;
    if lim.rlim_max != libc::RLIM_INFINITY && lim.rlim_max < want {
        tracing::warn!(
            limit = lim.rlim_max,
            want,
            "the open-file limit is below what limits.max_connections needs (two per connection); \
             raise it (LimitNOFILE, ulimit -Hn) or lower max_connections"
        );
    }
}

/// The CPUs the calling thread may run on (the process's cgroup's cpuset,
/// say), in order.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data, filled in by the kernel; CPU_ISSET
    // reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Pins `thread` (a live thread of this process) to `cpu`.
pub fn pin(thread: libc::pthread_t, cpu: usize) -> std::io::Result<()> {
    // SAFETY: as above; CPU_SET writes inside the set (cpu came from
    // `allowed_cpus`, so it is below CPU_SETSIZE), and the JoinHandle the
    // caller holds keeps `thread` valid.
    let err = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::pthread_setaffinity_np(thread, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// One listener per worker on `addr`, all with SO_REUSEPORT (and
/// SO_REUSEADDR: a restart must not wait out TIME_WAIT) and a deep backlog.
/// With port 0, the first picks the port and the others take the same.
fn bind_workers(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind_one(addr)?);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt with an int option on a valid descriptor.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let listener = std::net::TcpListener::from(socket);
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes for this family.
    if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen on a bound socket.
    if unsafe { libc::listen(fd, 4096) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(listener)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Tells the main thread, when dropped, that worker `.0` has ended (on
/// return and on panic alike).
struct WorkerExit(usize, tokio::sync::mpsc::UnboundedSender<usize>);

impl Drop for WorkerExit {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made (inside a
/// runtime); each `recv` waits for the next.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Watches the config file and the dtab file; applies what changed.
/// The router holds the namers, so replacing them there stops the old file
/// namer's watcher.
fn spawn_reloader(args: RunArgs, mut current: Settings, router: Arc<Router>) {
    let interval = ms(current.watch_interval_ms);
    let stamp = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let mut config_stamp = stamp(&args.config);
            let mut dtab_stamp = stamp(&current.dtab_file);
            loop {
                std::thread::sleep(interval);
                let (c, d) = (stamp(&args.config), stamp(&current.dtab_file));
                if c == config_stamp && d == dtab_stamp {
                    continue;
                }
                config_stamp = c;
                dtab_stamp = d;
                // An empty file is a write caught half-way (truncated, not
                // yet filled), not a wish for the defaults; the write that
                // fills it changes the stamp and is read then.
                if args.config.as_ref().is_some_and(|p| {
                    std::fs::read_to_string(p).is_ok_and(|t| t.trim().is_empty())
                }) {
                    tracing::error!("config reload refused, keeping the running settings: the config file is empty");
                    continue;
                }
                let next = match args.settings() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("config reload refused, keeping the running settings: {e}");
                        continue;
                    }
                };
                let base = match parse_base(&next) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("dtab reload refused, keeping the running dtab: {e}");
                        continue;
                    }
                };
                if next.fs_dir != current.fs_dir || next.watch_interval_ms != current.watch_interval_ms {
                    let fs_namer = next.fs_dir.clone().map(|dir| FsNamer::start(dir, ms(next.watch_interval_ms), router.generation().clone()));
                    router.set_namers(namers(&fs_namer));
                    tracing::info!(fs_dir = ?next.fs_dir, "namers reloaded");
                }
                if base.to_string() != router.base().dtab.to_string() {
                    tracing::info!(dtab = %base, "base dtab reloaded");
                    router.set_base(base);
                }
                let restart_only = Settings { dtab: next.dtab.clone(), dtab_file: next.dtab_file.clone(), fs_dir: next.fs_dir.clone(), watch_interval_ms: next.watch_interval_ms, ..current.clone() };
                if restart_only != next {
                    tracing::warn!("settings other than the dtab and namers changed; they apply at the next restart");
                }
                dtab_stamp = stamp(&next.dtab_file);
                current = next;
            }
        })
        .expect("spawn the reload thread");
}
