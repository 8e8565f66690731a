//! `sidetrack run`: start the proxy.
//!
//! Settings come from defaults, then `--config FILE`, then flags. The config
//! file and the dtab file are watched; a changed dtab or namer setting
//! applies without a restart, and a file that no longer parses is refused
//! with a log line while the old settings stay. SIGTERM or SIGINT stops
//! accepting, lets in-flight requests finish within the grace period, and
//! exits 0. A proxy already running on the same address hands its
//! listeners and interception over (`crate::handover`): the new one takes
//! them before the old one stops accepting, and the old one drains.
//!
//! This file is the start-up sequence; each step it takes has a file of its
//! own: `interception` (eBPF programs or nftables rules), `limits` (open
//! files), `listen` (the workers' listeners), `affinity` (pinning workers),
//! `signals` (stop signals, workers' ends), `succession` (taking over from a
//! running proxy, offering ours to a successor) and `reload` (the file
//! watcher).

mod affinity;
mod interception;
mod limits;
mod listen;
mod reload;
mod signals;
mod succession;

use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use clap::Args;
use tokio::sync::watch;

use crate::{
    admin,
    config::{IdentifierKind, InterceptMode, Settings, ms},
    dtab::{Dtab, Namers},
    handover,
    namer::{
        fs::{self, FsNamer},
        k8s::{self, K8sNamer},
    },
    observe::{
        capture::Capture,
        dashboard::Dashboard,
        exchange::Observer,
        metrics::{ExtraCounters, Metrics},
    },
    policy::{Mirrors, OverridePolicy, Rules, overrides, signing::Keys},
    proxy::{
        self, ProxyConfig, Shared, Stop,
        budget::{BudgetMetrics, MemoryBudget},
    },
    route::{Identifier, Router, RouterLimits},
};

pub use affinity::{allowed_cpus, pin, pin_current};
use interception::{Interception, start_interception};
use limits::raise_fd_limit;
use listen::bind_workers;
use reload::{Watched, spawn_reloader};
use signals::{StopSignals, WorkerExit};

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
        let config_stamp = Watched::config(&self.config);
        let settings = self.settings()?;
        let watched = Watched::with(config_stamp, &settings);
        let base = parse_base(&settings)?;
        // A proxy running on our address hands its sockets and data path
        // over: it is asked before anything is bound or loaded, and keeps
        // serving until we say ready. Whatever fails before that leaves it
        // as it was.
        let handover_path = settings.handover_socket();
        let mut predecessor = match &handover_path {
            Some(path) => handover::connect(path, ms(settings.handover.timeout_ms))?,
            None => None,
        };
        if let Some(p) = &predecessor {
            succession::check(&settings, &p.meta)?;
            tracing::info!(
                pid = p.meta.pid,
                version = p.meta.version,
                "taking over from the running proxy"
            );
        }
        let generation = Arc::new(AtomicU64::new(0));
        let fs_namer = settings
            .fs_dir
            .clone()
            .map(|dir| FsNamer::start(dir, ms(settings.watch_interval_ms), generation.clone()));
        let k8s_namer = if settings.k8s.enabled {
            let api_server = settings.k8s.api_server.clone();
            // The node's pods name the namespace of short names.
            let node_name = settings
                .k8s
                .node_name
                .clone()
                .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()));
            Some(K8sNamer::start(
                move || k8s::connect(api_server),
                generation.clone(),
                k8s::Options {
                    node_name,
                    ..k8s::Options::default()
                },
            )?)
        } else {
            None
        };
        let mut metrics = Metrics::new(settings.max_route_series);
        if settings.dashboard.enabled {
            metrics = metrics.with_dashboard(Dashboard::new(
                settings.dashboard.clone(),
                std::time::Instant::now(),
            ));
        }
        let metrics = Arc::new(metrics);
        let router = Arc::new(Router::new(
            base,
            namers(&fs_namer, &k8s_namer),
            RouterLimits::of(&settings),
            metrics.clone(),
            generation,
        ));
        router.set_policy(override_policy(&settings)?);
        router.set_rules(Rules::new(&settings.rules)?);
        router.set_mirrors(Mirrors::new(&settings.mirrors)?);
        metrics.add_extra(Arc::new(CacheCounters(router.clone())));
        if let Some(k8s) = &k8s_namer {
            k8s.watch_namespace(&settings.k8s.namespace);
            metrics.add_extra(Arc::new(K8sCounters(k8s.clone())));
        }

        raise_fd_limit(settings.limits.max_connections);
        let listeners = match &mut predecessor {
            Some(p) => succession::take_listeners(p, settings.listen, settings.workers.max(1))?,
            None => bind_workers(settings.listen, settings.workers.max(1))
                .map_err(|e| format!("listening on {}: {e}", settings.listen))?,
        };
        let workers = listeners.len();
        let handed_admin = predecessor
            .as_mut()
            .filter(|p| p.meta.admin == settings.admin)
            .and_then(|p| p.take("admin"));
        let admin_listener = match handed_admin {
            Some(fd) => std::net::TcpListener::from(fd),
            None => std::net::TcpListener::bind(settings.admin)
                .map_err(|e| format!("admin listener on {}: {e}", settings.admin))?,
        };
        let listen_addr = listeners[0].local_addr().map_err(|e| e.to_string())?;
        let ready = Arc::new(AtomicBool::new(false));

        let mut cfg = ProxyConfig::from_settings(&settings);
        // Each worker accepts on its own listener, so each takes its share.
        cfg.max_connections = cfg.max_connections.div_ceil(workers);
        let (orig_dst, interception) =
            start_interception(&settings, &mut cfg, &metrics, predecessor.as_mut())?;
        // Service ports the cluster says never to intercept go into the
        // data path's map as the namer learns them.
        if let (Some(k8s), Interception::Ebpf(datapath)) = (&k8s_namer, &interception) {
            let datapath = datapath.clone();
            k8s.on_skipped(Box::new(move |skipped| {
                match datapath.set_skipped(skipped) {
                    Ok(()) => tracing::info!(
                        destinations = skipped.len(),
                        "skipped Service ports updated"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not update the skipped Service ports")
                    }
                }
            }));
        }
        // What a successor of ours will be offered: duplicates of every
        // listener, kept before the workers take them.
        let offered = match handover_path
            .as_deref()
            .map(|path| own_offer(path, &listeners, &admin_listener, &interception))
        {
            Some(Ok(offer)) => Some(offer),
            Some(Err(e)) => {
                tracing::warn!("restarts will have a gap: {e}");
                None
            }
            None => None,
        };
        if let Some(p) = predecessor.take() {
            let pid = p.meta.pid;
            if let Err(e) = p.commit() {
                // Nothing of ours served yet; what we hold is its too.
                interception.release();
                return Err(format!(
                    "taking over from pid {pid}: {e}; it goes on serving"
                ));
            }
            tracing::info!(pid, "took over; the old proxy drains what it holds");
        }

        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let diff = Arc::new(crate::diff::Engine::new(settings.diff.clone()));
        let admin_addr = admin::spawn(
            admin_listener,
            admin::Admin {
                metrics: metrics.clone(),
                router: router.clone(),
                ready: ready.clone(),
                diff: diff.clone(),
                about: interception.describe(&settings),
            },
            admin_stop_rx,
        )
        .map_err(|e| format!("admin server: {e}"))?;
        // Told about every exchange: the metrics when the dashboard is on
        // (each exchange's row there, and its bytes on its route's
        // counters), the access log and capture when on. With none, the connections
        // note nothing for observers.
        let mut observers: Vec<Arc<dyn Observer>> = Vec::new();
        if metrics.dashboard().is_some() {
            observers.push(metrics.clone());
        }
        let access_log = if settings.access_log.enabled {
            let log = crate::observe::access_log::AccessLog::start(&settings.access_log)
                .map_err(|e| format!("access_log: {}: {e}", settings.access_log.path))?;
            metrics.add_extra(log.clone());
            observers.push(log.clone());
            Some(log)
        } else {
            None
        };
        if settings.capture.enabled {
            let capture = Capture::start(&settings.capture)?;
            metrics.add_extra(capture.stats());
            observers.push(Arc::new(capture));
        }
        let shared = Arc::new(Shared {
            cfg,
            diff: diff.clone(),
            k8s: k8s_namer.clone(),
            observers,
            router: router.clone(),
            metrics: metrics.clone(),
            identifier: Identifier::new(settings.identifier, &settings.dst_prefix)
                .with_k8s(&settings.k8s.namespace, &settings.k8s.cluster_domain),
            orig_dst,
            budget: MemoryBudget::new(
                settings.limits.memory_budget_bytes,
                settings.route_cache_max_bytes,
            ),
        });
        metrics.add_extra(Arc::new(BudgetMetrics(shared.clone())));
        let grace = ms(settings.shutdown_grace_ms);
        let yield_before_wait = settings.yield_before_wait;
        let (stop_tx, stop_rx) = watch::channel(Stop::No);

        let cpus = if settings.pin_workers {
            allowed_cpus().map_err(|e| format!("pin_workers: {e}"))?
        } else {
            Vec::new()
        };
        let (handover_tx, mut handover_rx) = tokio::sync::mpsc::unbounded_channel();
        let offered_fds: succession::Offered = Arc::default();
        let handover_listener = match offered {
            Some((listener, ebpf, fds)) => {
                let listener = Arc::new(listener);
                *offered_fds.lock().unwrap_or_else(|e| e.into_inner()) = fds;
                match listener.publish().and_then(|()| {
                    succession::offer_to_successors(
                        listener.clone(),
                        &settings,
                        ebpf,
                        offered_fds.clone(),
                        handover_tx,
                    )
                }) {
                    Ok(()) => Some(listener),
                    Err(e) => {
                        tracing::warn!("restarts will have a gap: handover socket: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        spawn_reloader(self, settings, router, diff, watched, k8s_namer);

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
                pin(&handle, cpu).map_err(|e| format!("pinning worker {i} to CPU {cpu}: {e}"))?;
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
        // Until a stop signal, a worker's end or a successor's takeover. A
        // signal while a successor prepares waits for its outcome: it may
        // be the one that replaces us (a DaemonSet's surge), and switching
        // interception off under it would stop its traffic too.
        let mut signalled = false;
        let mut successor_preparing = false;
        let ending = signals.block_on(async {
            loop {
                tokio::select! {
                    _ = stop_signals.recv() => {
                        if !successor_preparing || signalled {
                            signalled = true;
                            return Ending::Stop;
                        }
                        signalled = true;
                        tracing::info!("stop signal while a successor prepares: waiting for it");
                    }
                    Some(i) = exited_rx.recv() => return Ending::WorkerDied(i),
                    Some(event) = handover_rx.recv() => match event {
                        succession::Event::Started => successor_preparing = true,
                        succession::Event::Aborted(e) => {
                            tracing::warn!("a successor did not take over: {e}; serving on");
                            successor_preparing = false;
                            if signalled {
                                return Ending::Stop;
                            }
                        }
                        succession::Event::Committed(pid) => return Ending::HandedOver(pid),
                    },
                }
            }
        });
        ready.store(false, Ordering::Release);
        let worker_died = match ending {
            Ending::WorkerDied(i) => Some(i),
            _ => None,
        };
        match ending {
            Ending::HandedOver(pid) => {
                // The successor accepts on the same listeners and runs the
                // same programs: stop accepting, leave interception on.
                tracing::info!(
                    successor = pid,
                    "handed over; draining, interception stays on"
                );
                let _ = admin_stop.send(true);
                // The successor holds the sockets now; our copies go.
                succession::withdraw(&offered_fds);
                let _ = stop_tx.send(Stop::HandedOver);
            }
            Ending::Stop | Ending::WorkerDied(_) => {
                match worker_died {
                    None => tracing::info!("shutdown requested"),
                    Some(i) => tracing::error!(
                        worker = i,
                        "a worker stopped on its own; shutting the proxy down"
                    ),
                }
                // A stopping proxy has nothing to hand over, and keeps no
                // copy of a listener past its workers' own.
                if let Some(l) = &handover_listener {
                    l.close();
                }
                succession::withdraw(&offered_fds);
                // Interception first: from here new connects on the node go to
                // their destinations, and only then do the listeners close.
                interception.stop();
                let _ = stop_tx.send(Stop::Drain);
            }
        }
        let handed_over = matches!(ending, Ending::HandedOver(_));
        // Each worker reports its end on the channel, so the wait needs no
        // thread of its own (which, with the machine out of threads, could
        // not be had), and a second signal can end it. After a handover,
        // the first signal is the one that would have stopped us anyway
        // (the kubelet's, deleting the old pod): the drain goes on.
        let mut left = handles.len() - usize::from(worker_died.is_some());
        let all_ended = signals.block_on(async {
            loop {
                tokio::select! {
                    _ = async {
                        while left > 0 && exited_rx.recv().await.is_some() {
                            left -= 1;
                        }
                    } => return true,
                    _ = stop_signals.recv() => {
                        if handed_over && !signalled {
                            signalled = true;
                        } else {
                            return false;
                        }
                    }
                }
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
        if handed_over {
            // The successor holds the programs (or its own rules): nothing
            // is detached or removed.
            interception.release();
            if all_ended && !signalled {
                // Exiting now would have a supervisor start us again (a
                // kubelet restarts an exited container until it deletes
                // the pod), and that process would take over back.
                tracing::info!("drained; exiting at the stop signal");
                signals.block_on(stop_signals.recv());
            }
        } else {
            // Dropped here, after the workers: the programs detach or the rules go.
            drop(interception);
        }
        drop(handover_listener);
        // What the workers logged last is written before the exit.
        if let Some(log) = access_log {
            log.stop();
        }
        Ok(if drained && worker_died.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

/// How the serving part of the sequence ended.
enum Ending {
    Stop,
    WorkerDied(usize),
    HandedOver(u32),
}

/// Our own handover socket (bound, not yet published) and what it offers:
/// duplicates of the listeners and of the data path's descriptors.
type Offered = (
    handover::Listener,
    Option<handover::EbpfMeta>,
    Vec<(String, OwnedFd)>,
);

fn own_offer(
    path: &std::path::Path,
    listeners: &[std::net::TcpListener],
    admin: &std::net::TcpListener,
    interception: &Interception,
) -> Result<Offered, String> {
    let dup = |l: &std::net::TcpListener| -> Result<OwnedFd, String> {
        Ok(OwnedFd::from(l.try_clone().map_err(|e| e.to_string())?))
    };
    let mut fds = Vec::new();
    for l in listeners {
        fds.push(("listener".to_string(), dup(l)?));
    }
    fds.push(("admin".to_string(), dup(admin)?));
    let (ebpf, data_path) = interception.offer().map_err(|e| e.to_string())?;
    fds.extend(data_path);
    if fds.len() > handover::MAX_FDS {
        return Err(format!(
            "{} descriptors to hand over, more than {}",
            fds.len(),
            handover::MAX_FDS
        ));
    }
    let listener = handover::Listener::bind(path)
        .map_err(|e| format!("handover socket {}: {e}", path.display()))?;
    Ok((listener, ebpf, fds))
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

    fn gauges(&self, out: &mut Vec<(&'static str, &'static str, i64)>) {
        let s = self.0.cache_stats();
        out.push((
            "dtab_cache_routes",
            "Routes held in the binding cache",
            i64::try_from(s.len).unwrap_or(i64::MAX),
        ));
        out.push((
            "dtab_cache_bytes",
            "What the cached routes hold, keys included (route_cache_max_bytes bounds it)",
            i64::try_from(s.bytes).unwrap_or(i64::MAX),
        ));
    }
}

/// The Kubernetes namer in `/metrics`.
struct K8sCounters(Arc<K8sNamer>);

impl ExtraCounters for K8sCounters {
    fn counters(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        out.push((
            "k8s_watch_restarts",
            "Kubernetes watches that failed and started again with a list, after a back-off (API server down, 410 Gone, 403, 5xx)",
            self.0.stats().restarts,
        ));
    }

    fn gauges(&self, out: &mut Vec<(&'static str, &'static str, i64)>) {
        let s = self.0.stats();
        let as_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        out.push((
            "k8s_last_sync_age_seconds",
            "Seconds the least current Kubernetes watch has gone without a complete list since it started or failed (0: every watch is in sync)",
            i64::try_from(s.sync_age.as_secs()).unwrap_or(i64::MAX),
        ));
        out.push((
            "k8s_namespaces",
            "Namespaces the Kubernetes namer watches",
            as_i64(s.namespaces),
        ));
        out.push((
            "k8s_services",
            "Services known in the watched namespaces",
            as_i64(s.services),
        ));
        out.push((
            "k8s_endpoints",
            "Endpoints in the EndpointSlices of the watched namespaces, ready or not (over k8s_services: endpoints per service)",
            as_i64(s.endpoints),
        ));
    }
}

/// The override policy of `s`, with the keys of signed overrides read
/// from `overrides.keys_dir`.
fn override_policy(s: &Settings) -> Result<OverridePolicy, String> {
    let policy = OverridePolicy::new(&s.overrides)?;
    let Some(dir) = &s.overrides.keys_dir else {
        if policy.mode == overrides::Mode::Signed {
            return Err("overrides.mode signed needs overrides.keys_dir".into());
        }
        return Ok(policy);
    };
    let keys =
        Keys::read_dir(dir).map_err(|e| format!("overrides.keys_dir {}: {e}", dir.display()))?;
    if keys.is_empty() && policy.mode == overrides::Mode::Signed {
        tracing::warn!(dir = %dir.display(), "no keys for signed overrides: every override is refused");
    }
    Ok(policy.with_keys(keys))
}

fn parse_base(s: &Settings) -> Result<Dtab, String> {
    let text = s.base_dtab_text()?;
    Dtab::parse(&text).map_err(|e| format!("invalid base dtab: {e}"))
}

fn namers(fs: &Option<Arc<FsNamer>>, k8s: &Option<Arc<K8sNamer>>) -> Namers {
    let mut namers = Namers::default();
    if let Some(fs) = fs {
        namers = namers.with(fs::KIND, fs.clone());
    }
    if let Some(k8s) = k8s {
        namers = namers.with(k8s::KIND, k8s.clone());
    }
    namers
}
