//! `cargo xtask soak [--minutes N]`: a long, mixed, bounded-rate load on
//! the netns test bed with the proxy in eBPF mode, watching for anything
//! that grows when it should not (issue 18).
//!
//! The node is the demo's (`staging.rs`: pods `client`, `hello`,
//! `world-v1`, `world-v2`) plus the soak's backends (`backend.rs`): `app-v1`
//! and the staged `app-v2`, `flaky` (dies mid-response), `slow`, `interim`
//! (floods 102s), `refused` (nothing listens), and a `hostile` client pod.
//! Every request goes to one service address that nothing owns; connect4
//! sends it to the proxy and the Host header names the service. The load
//! (`load.rs`) runs in `client` (well-formed requests) and `hostile` (the
//! issue's hostile cases) and judges every answer as it comes.
//!
//! Every few seconds the soak samples (`sample.rs`) the proxy's RSS and
//! open descriptors, its SOCKHASH, ORIG_DST and COOKIE_DST entries, the
//! kernel's TCP sockets and memory, its route cache, connection gauge and
//! /metrics size, and the requests answered. After the warm-up each series
//! is judged (`trend.rs`): the soak fails if one trends upward beyond its
//! tolerance ([`SERIES`] says which and why), if any request failed, or
//! if the proxy died. It writes `samples.json`, `soak.svg` and
//! `summary.md` (`report.rs`).

mod backend;
mod http;
pub mod load;
mod report;
mod sample;
pub mod trend;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::{
    cmd,
    staging::{self, APP_PORT, Bins, Mode, Staging},
    testbed::{self, Pod},
};
use load::{Env, Report};
use trend::{Tolerance, Trend};

pub use backend::main as backend_main;
pub use load::main as load_main;

/// The proxy's settings for the soak: the timeouts short enough that the
/// hostile cases cycle many times a minute, `max_connections` low enough
/// that the idle sockets reach it (so the oldest idle one is closed for a
/// newcomer all the time), a route cache small enough that the
/// distinct dtabs fill it during the warm-up (what is checked is that it
/// stays bounded, not its size), and overrides to literal addresses
/// allowed but for loopback (the default policy refuses every `/$`
/// destination with 403 before any connect; the soak wants the distinct
/// addresses to reach the pool, the balancer and the metrics, and a share
/// refused).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ProxyLimits {
    pub workers: usize,
    pub route_cache_max_bytes: usize,
    pub head_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub response_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub linger_ms: u64,
    pub max_connections: usize,
}

/// The destinations overrides may not bind to in the soak.
pub const DENIED: &str = "/$/inet/127.0.0.1";

impl ProxyLimits {
    pub const SOAK: ProxyLimits = ProxyLimits {
        workers: 2,
        route_cache_max_bytes: 512 * 1024,
        head_timeout_ms: 1500,
        first_byte_timeout_ms: 2000,
        response_timeout_ms: 3000,
        body_timeout_ms: 1000,
        linger_ms: 2000,
        max_connections: 128,
    };

    /// As lines of the proxy's settings file.
    pub fn yaml(&self) -> String {
        format!(
            "workers: {}\nroute_cache_max_bytes: {}\nlimits:\n  head_timeout_ms: {}\n  \
             first_byte_timeout_ms: {}\n  response_timeout_ms: {}\n  body_timeout_ms: {}\n  \
             linger_ms: {}\n  max_connections: {}\noverrides:\n  denied_destinations: [\"{DENIED}\"]\n",
            self.workers,
            self.route_cache_max_bytes,
            self.head_timeout_ms,
            self.first_byte_timeout_ms,
            self.response_timeout_ms,
            self.body_timeout_ms,
            self.linger_ms,
            self.max_connections
        )
    }
}

/// One sampled series: its key in a sample, what the plot calls it, and
/// how much it may grow from the first third of the run after the
/// warm-up to the last (`None`: shown, not judged).
pub struct Series {
    pub key: &'static str,
    pub title: &'static str,
    pub tolerance: Option<Tolerance>,
    /// Judged only after a warm-up this long (the series needs that
    /// long to reach its level).
    pub min_warmup_secs: f64,
}

impl Series {
    /// The tolerance this run judges the series by, if it does.
    pub fn judged(&self, opts: &Options) -> Option<Tolerance> {
        self.tolerance
            .filter(|_| opts.warmup_secs >= self.min_warmup_secs)
    }
}

const fn judged(key: &'static str, title: &'static str, abs: f64, rel: f64) -> Series {
    Series {
        key,
        title,
        tolerance: Some(Tolerance { abs, rel }),
        min_warmup_secs: 0.0,
    }
}

const fn shown(key: &'static str, title: &'static str) -> Series {
    Series {
        key,
        title,
        tolerance: None,
        min_warmup_secs: 0.0,
    }
}

/// Every series, in the plot's order. The tolerances are for a run of
/// five minutes or more (doubled for shorter ones):
///
/// * RSS: 2 MB or 5%. The allocator's arenas and the route cache (full
///   after the warm-up) move by a few hundred kB; a leak of 10 bytes a
///   request at this rate is 2 MB in 16 minutes, the distance between the
///   thirds' middles in a 30-minute run.
/// * descriptors, SOCKHASH entries, TCP sockets in use, open connections:
///   levels of concurrency, which the idle sockets (up to
///   `max_connections`) swing by tens: 40 (80 for the SOCKHASH, two
///   entries a connection) or 20%. A leak of one socket a second is
///   hundreds.
/// * ORIG_DST and COOKIE_DST: entries are taken at accept, so the level is
///   the few in flight: 16 or 20%.
/// * TCP memory (machine-wide, in pages): the kernel counts it in per-CPU
///   batches of 256 pages (1 MiB) and other work on the machine moves it;
///   768 pages (3 MiB, two CPUs' batches and one more) or 25%. Orphans
///   (machine-wide): 16 or 50%.
/// * TIME-WAIT in the node's namespace: the short connections' rate times
///   60 s (the kernel's TIME-WAIT); 200 or 25%, judged only after a
///   warm-up of 75 s or more, since it climbs for the first minute.
/// * samples in /metrics: every label set exists after the warm-up; 8.
/// * the route cache: full at its bound; 64 KiB or 10%.
/// * the memory the proxy charges to its budget (connection buffers):
///   follows the connections open; 512 KiB or 20%.
///
/// Socket buffers in the slab (`skbuff_head_cache`, machine-wide) are
/// shown, not judged: every other process's traffic is in them. So are
/// the stall probe and the machine's CPU pressure, which tell whether
/// failures came with the whole machine stopping.
pub const SERIES: [Series; 19] = [
    judged("rss_kb", "proxy RSS (kB)", 2048.0, 0.05),
    judged("fds", "proxy open descriptors", 40.0, 0.2),
    judged("sockhash", "SOCKHASH entries", 80.0, 0.2),
    judged("orig_dst", "ORIG_DST entries", 16.0, 0.2),
    judged("cookie_dst", "COOKIE_DST entries", 16.0, 0.2),
    judged("tcp_mem_pages", "TCP memory, machine (pages)", 768.0, 0.25),
    judged("tcp_inuse", "TCP sockets in use, node netns", 80.0, 0.2),
    judged("tcp_orphan", "TCP orphans, machine", 16.0, 0.5),
    Series {
        min_warmup_secs: 75.0,
        ..judged("tcp_tw", "TCP TIME-WAIT, node netns", 200.0, 0.25)
    },
    judged("connections_active", "proxy connections open", 40.0, 0.2),
    judged("dtab_cache_kb", "route cache (KiB)", 64.0, 0.1),
    judged(
        "memory_charged_kb",
        "memory charged to the budget (KiB)",
        512.0,
        0.2,
    ),
    judged("metric_series", "samples in /metrics", 8.0, 0.0),
    shown("skbuff_slab", "socket buffers in the slab, machine"),
    shown("stall_ms", "the soak's probe thread overslept (ms, most)"),
    shown(
        "cpu_pressure_pct",
        "CPU pressure, machine (% of time some task waited)",
    ),
    shown("rps", "answers/s (ok + expected refusals)"),
    shown("retried", "requests retried (cumulative)"),
    shown("failed", "requests failed (cumulative)"),
];

/// How long and how closely to watch.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub every_secs: f64,
    /// Multiplies every tolerance.
    pub tolerance_factor: f64,
    #[serde(skip)]
    pub out_dir: PathBuf,
}

impl Options {
    /// A run of `minutes`: the first 20% (at least 20 s) is warm-up;
    /// samples every 5 s, or every 2 s in runs under five minutes, whose
    /// tolerances are doubled.
    pub fn minutes(minutes: f64, out_dir: PathBuf) -> Result<Options> {
        ensure!(
            (0.75..=24.0 * 60.0).contains(&minutes),
            "--minutes must be from 0.75 to a day"
        );
        let duration_secs = minutes * 60.0;
        let short = minutes < 5.0;
        Ok(Options {
            duration_secs,
            warmup_secs: (duration_secs * 0.2).max(20.0),
            every_secs: if short { 2.0 } else { 5.0 },
            tolerance_factor: if short { 2.0 } else { 1.0 },
            out_dir,
        })
    }
}

/// One sample: seconds since the load started, and every series' value.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_secs: f64,
    pub values: BTreeMap<String, f64>,
}

/// Everything a run found (`samples.json`).
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub options: Options,
    pub limits: ProxyLimits,
    pub machine: String,
    pub samples: Vec<Sample>,
    pub trends: Vec<Trend>,
    /// The two load processes' last reports.
    pub loads: Vec<Report>,
    /// Counters from the proxy's /metrics at the end.
    pub proxy_counters: BTreeMap<String, f64>,
    /// Why the run failed; empty when it passed.
    pub problems: Vec<String>,
}

/// `cargo xtask soak --minutes N`: results in `target/soak`.
pub fn run(minutes: f64) -> Result<()> {
    run_into(minutes, "soak")
}

/// The short soak of `cargo xtask test` (75 s), results in
/// `target/soak-test`.
pub fn run_short() -> Result<()> {
    run_into(1.25, "soak-test")
}

fn run_into(minutes: f64, dir: &str) -> Result<()> {
    let opts = Options::minutes(minutes, crate::target_dir().join(dir))?;
    // Before the soak's threads: Ctrl-C tears the test bed down.
    testbed::teardown_on_signal()?;
    let bins = Bins::build()?;
    soak(&opts, bins)
}

fn soak(opts: &Options, bins: Bins) -> Result<()> {
    let limits = ProxyLimits::SOAK;
    fs::create_dir_all(&opts.out_dir)?;
    cmd::step(format!(
        "soak: {:.1} min ({:.0} s warm-up), sampling every {:.0} s; the proxy in eBPF mode",
        opts.duration_secs / 60.0,
        opts.warmup_secs,
        opts.every_secs
    ));
    let mut st = Staging::start_with("soak", Mode::Ebpf, bins.clone(), &limits.yaml())?;
    let backends = Backends::start(&mut st, &bins)?;
    backends.wait_routed(&st)?;
    let pid = st.proxy_pid().context("the proxy is not running")?;
    let maps = sample::Maps::of(pid)?;
    let env = Env {
        service: SocketAddr::V4(staging::hello_service()),
        // On past the last sample, so that every sample sees the full load.
        secs: opts.duration_secs + 10.0,
        hello: st.hello.ip(),
        world_v1: st.world_v1.ip(),
        world_v2: st.world_v2.ip(),
        app_v1: SocketAddr::V4(SocketAddrV4::new(backends.pod("app-v1").ip(), APP_PORT)),
        refused: backends.pod("refused").ip(),
        limits,
    };
    cmd::note(format!(
        "proxy pid {pid} on {}; load from pods client and hostile to {}",
        st.proxy_addr, env.service
    ));
    let mut loads = Loads::start(&st, &backends, &bins, &env, &opts.out_dir)?;
    let (samples, died) = watch(opts, &mut st, pid, &maps, &loads);
    let (reports, mut problems) = match died {
        // No need to wait out the load's deadline against a dead proxy.
        Some(_) => (loads.abort(), Vec::new()),
        None => loads.finish(Duration::from_secs(60)),
    };
    let metrics_text = st.metrics().unwrap_or_default();
    fs::write(opts.out_dir.join("metrics.txt"), &metrics_text)?;
    fs::write(opts.out_dir.join("sidetrack.log"), st.proxy_log())?;
    drop(loads);
    drop(backends);
    drop(st);

    let trends: Vec<Trend> = SERIES
        .iter()
        .filter_map(|s| {
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter(|x| x.t_secs >= opts.warmup_secs)
                .filter_map(|x| Some((x.t_secs, *x.values.get(s.key)?)))
                .collect();
            trend::judge(s.key, &points, s.judged(opts)?, opts.tolerance_factor)
        })
        .collect();
    problems.extend(died);
    problems.extend(check(opts, &samples, &trends, &reports));
    let outcome = Outcome {
        options: opts.clone(),
        limits,
        machine: crate::bench::machine(),
        samples,
        trends,
        loads: reports,
        proxy_counters: proxy_counters(&metrics_text),
        problems,
    };
    report::write(&outcome, &opts.out_dir)?;
    if outcome.problems.is_empty() {
        cmd::step("soak passed");
        Ok(())
    } else {
        bail!("the soak failed:\n  {}", outcome.problems.join("\n  "))
    }
}

/// The soak's pods beyond the demo's, and the backends running in them.
/// Dropping it stops the backends (the node's teardown would too).
struct Backends {
    pods: Vec<Pod>,
    children: Vec<Child>,
}

impl Backends {
    /// (pod, backend role; `None`: nothing listens there).
    const PODS: [(&'static str, Option<&'static str>); 7] = [
        ("app-v1", Some("ok")),
        ("app-v2", Some("ok")),
        ("flaky", Some("flaky")),
        ("slow", Some("slow")),
        ("interim", Some("interim")),
        ("refused", None),
        ("hostile", None),
    ];

    /// Adds the pods, starts the backends, and files each service's
    /// address for the file namer: `app` is `app-v1`'s pod; `app-v2`,
    /// `flaky`, `slow`, `interim` and `refused` are their own.
    fn start(st: &mut Staging, bins: &Bins) -> Result<Backends> {
        let mut b = Backends {
            pods: Vec::new(),
            children: Vec::new(),
        };
        for (name, role) in Backends::PODS {
            let pod = st.node.add_pod(name)?;
            if let Some(role) = role {
                let mut cmd = pod.command(&bins.app);
                cmd.args(&bins.app_args)
                    .args(["soak-backend", &format!("0.0.0.0:{APP_PORT}"), role, name])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                b.children.push(
                    cmd.spawn()
                        .with_context(|| format!("start the {name} backend"))?,
                );
                staging::wait_listening(&pod, APP_PORT)?;
            }
            b.pods.push(pod);
        }
        let disco = st.dir.join("disco");
        let file = |service: &str, pod: &str| {
            fs::write(
                disco.join(service),
                format!("{} {APP_PORT}\n", b.pod(pod).ip()),
            )
        };
        file("app", "app-v1")?;
        for name in ["app-v2", "flaky", "slow", "interim", "refused"] {
            file(name, name)?;
        }
        Ok(b)
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name() == name)
            .expect("one of Backends::PODS")
    }

    /// Waits (at most 15 s) until the file namer has the new services:
    /// `http://app/` from the client pod answers `app-v1`.
    fn wait_routed(&self, st: &Staging) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match st.curl("http://app/", staging::hello_service(), &[]) {
                Ok(body) if body == b"app-v1" => return Ok(()),
                other if Instant::now() > deadline => {
                    bail!("http://app/ is not routed to app-v1: {other:?}")
                }
                _ => thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The two load processes and what they last reported.
struct Loads {
    children: Vec<(&'static str, Child)>,
    latest: Vec<Arc<Mutex<Option<Report>>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Loads {
    /// `soak-load good` in pod `client`, `soak-load hostile` in pod
    /// `hostile`; their stderr goes to `<out>/load-<role>.log`.
    fn start(
        st: &Staging,
        backends: &Backends,
        bins: &Bins,
        env: &Env,
        out: &Path,
    ) -> Result<Loads> {
        let env_json = serde_json::to_string(env)?;
        let mut loads = Loads {
            children: Vec::new(),
            latest: Vec::new(),
            readers: Vec::new(),
        };
        for (role, pod) in [("good", &st.client), ("hostile", backends.pod("hostile"))] {
            let log = fs::File::create(out.join(format!("load-{role}.log")))?;
            let mut cmd = pod.command(&bins.app);
            cmd.args(&bins.app_args)
                .args(["soak-load", role, &env_json])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log);
            let mut child = cmd
                .spawn()
                .with_context(|| format!("start the {role} load in pod {}", pod.name()))?;
            let stdout = child.stdout.take().context("the load's stdout")?;
            let latest = Arc::new(Mutex::new(None));
            let slot = Arc::clone(&latest);
            loads.readers.push(thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(r) = serde_json::from_str::<Report>(&line) {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                    }
                }
            }));
            loads.children.push((role, child));
            loads.latest.push(latest);
        }
        Ok(loads)
    }

    /// The latest reports (those that came yet).
    fn reports(&self) -> Vec<Report> {
        self.latest
            .iter()
            .filter_map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    /// Stops both now; returns what they reported last.
    fn abort(&mut self) -> Vec<Report> {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.reports()
    }

    /// Waits for both to end (each stops at its deadline and finishes its
    /// exchanges in flight), at most `grace` more, then kills what is left;
    /// returns their last reports and what went wrong.
    fn finish(&mut self, grace: Duration) -> (Vec<Report>, Vec<String>) {
        let mut problems = Vec::new();
        let deadline = Instant::now() + grace;
        for (role, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        problems.push(format!("the {role} load exited with {status}"));
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(100))
                    }
                    _ => {
                        problems.push(format!(
                            "the {role} load did not end within {grace:?} of its deadline"
                        ));
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let reports = self.reports();
        for (role, _) in &self.children {
            if !reports.iter().any(|r| r.role == *role && r.done) {
                problems.push(format!("the {role} load sent no final report"));
            }
        }
        (reports, problems)
    }
}

impl Drop for Loads {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Samples every `every_secs` until the duration is over; stops early if
/// the proxy dies (and says so).
fn watch(
    opts: &Options,
    st: &mut Staging,
    pid: u32,
    maps: &sample::Maps,
    loads: &Loads,
) -> (Vec<Sample>, Option<String>) {
    let start = Instant::now();
    let every = Duration::from_secs_f64(opts.every_secs);
    let mut samples: Vec<Sample> = Vec::new();
    let (mut next, mut last_print) = (start, start);
    let mut answered_before = 0.0;
    let probe = sample::StallProbe::start();
    let mut pressure_before = sample::cpu_pressure_us();
    while start.elapsed().as_secs_f64() < opts.duration_secs {
        next += every;
        thread::sleep(next.saturating_duration_since(Instant::now()));
        if !st.proxy_running().unwrap_or(false) {
            return (
                samples,
                Some(format!(
                    "the proxy exited during the soak:\n{}",
                    tail(&st.proxy_log(), 20)
                )),
            );
        }
        let t = start.elapsed().as_secs_f64();
        let metrics = st.metrics().ok();
        let mut values = sample::take(pid, maps, metrics.as_deref());
        let total = load::total(&loads.reports());
        let answered = (total.ok + total.expected) as f64;
        let dt = t - samples.last().map_or(0.0, |s| s.t_secs);
        values.insert("rps".into(), (answered - answered_before) / dt.max(1e-3));
        values.insert("retried".into(), total.retried as f64);
        values.insert("failed".into(), total.failed as f64);
        answered_before = answered;
        values.insert("stall_ms".into(), probe.take_ms());
        let pressure = sample::cpu_pressure_us();
        if let (Some(now), Some(before)) = (pressure, pressure_before) {
            values.insert(
                "cpu_pressure_pct".into(),
                (now - before) / 1e4 / dt.max(1e-3),
            );
        }
        pressure_before = pressure;
        if last_print.elapsed() >= Duration::from_secs(30) || samples.is_empty() {
            last_print = Instant::now();
            let v = |k: &str| values.get(k).copied().unwrap_or(f64::NAN);
            cmd::note(format!(
                "{:>5.0} s: RSS {:.1} MB, {} fds, SOCKHASH {}, ORIG_DST {}, COOKIE_DST {}, TCP mem {} pages, \
                 {:.0} answers/s, {} ok, {} expected refusals, {} retried, {} failed",
                t,
                v("rss_kb") / 1000.0,
                v("fds"),
                v("sockhash"),
                v("orig_dst"),
                v("cookie_dst"),
                v("tcp_mem_pages"),
                v("rps"),
                total.ok,
                total.expected,
                total.retried,
                total.failed
            ));
        }
        samples.push(Sample { t_secs: t, values });
    }
    (samples, None)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What makes the run fail besides the proxy dying: a series trending
/// upward, a request that failed, a kind of traffic that never ran.
fn check(opts: &Options, samples: &[Sample], trends: &[Trend], reports: &[Report]) -> Vec<String> {
    let mut problems = Vec::new();
    for s in SERIES.iter().filter(|s| s.judged(opts).is_some()) {
        match trends.iter().find(|t| t.key == s.key) {
            Some(t) if t.upward => problems.push(format!(
                "{} trends upward after the warm-up: {:.1} -> {:.1} (+{:.1}, {:+.2}/min), more than the {:.1} allowed",
                s.title, t.start, t.end, t.growth, t.slope_per_min, t.allowed
            )),
            Some(_) => {}
            None => problems.push(format!("{}: too few samples after the warm-up to judge", s.title)),
        }
    }
    problems.extend(failure_times(samples));
    for r in reports {
        for (kind, t) in &r.kinds {
            if t.failed > 0 {
                let well = if load::well_formed(kind) {
                    "well-formed "
                } else {
                    ""
                };
                problems.push(format!(
                    "{} {well}{kind} request(s) failed, e.g.: {}",
                    t.failed,
                    t.examples.join(" | ")
                ));
            }
            if t.ok + t.expected == 0 {
                problems.push(format!("no {kind} request was answered as it should be"));
            }
        }
    }
    problems
}

/// When requests failed (the sample intervals in which the count grew),
/// with the most the probe thread overslept there and the machine's CPU
/// pressure: failures that come with a stalled machine point at the
/// machine first.
fn failure_times(samples: &[Sample]) -> Option<String> {
    let v = |s: &Sample, k: &str| s.values.get(k).copied().unwrap_or(0.0);
    let at: Vec<String> = samples
        .windows(2)
        .filter(|w| v(&w[1], "failed") > v(&w[0], "failed"))
        .map(|w| {
            format!(
                "{:.0}-{:.0} s: {:.0} failed, the probe overslept {:.0} ms, CPU pressure {:.0}%",
                w[0].t_secs,
                w[1].t_secs,
                v(&w[1], "failed") - v(&w[0], "failed"),
                v(&w[1], "stall_ms").max(v(&w[0], "stall_ms")),
                v(&w[1], "cpu_pressure_pct")
            )
        })
        .collect();
    (!at.is_empty()).then(|| format!("requests failed in {}", at.join("; ")))
}

/// The proxy's counters worth a line in the summary: errors by kind,
/// evictions at max_connections, warnings held back, failed SOCKHASH adds.
fn proxy_counters(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let keep = name.starts_with("sidetrack_errors_total{")
            || [
                "sidetrack_connections_evicted_total",
                "sidetrack_connections_total",
                "sidetrack_log_lines_suppressed_total",
                "sidetrack_ebpf_sockhash_add_failed_total",
                "sidetrack_ebpf_connect_intercepted_total",
                "sidetrack_ebpf_msg_redirected_total",
                "sidetrack_ebpf_msg_passed_total",
            ]
            .contains(&name);
        if let (true, Ok(v)) = (keep, value.parse::<f64>())
            && (v != 0.0 || !name.starts_with("sidetrack_errors_total"))
        {
            out.insert(name.to_owned(), v);
        }
    }
    out
}
