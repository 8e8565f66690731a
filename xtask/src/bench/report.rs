//! The bench's output: Markdown tables on stdout (also saved as
//! `target/bench/table.md`, ready for the README), the issue's targets as
//! pass/fail lines with the measured ratios, `results.json`, and
//! `latency.svg` (latency percentiles per scenario, unpinned and pinned).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use serde::Serialize;

use super::{
    LargeResult, PINNED_CPU, PhaseResult, Plan, Results, ScenarioResult, baseline, proc,
    scenarios::Scenario,
};

/// One of the issue's targets.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub measured: String,
    /// "PASS", "FAIL", or "N/A" when a denominator is not above zero (a
    /// peer added nothing measurable over direct, as happens unpinned,
    /// where cross-CPU wake-ups swamp a hop's cost).
    pub verdict: &'static str,
    /// The issue the target comes from.
    pub issue: u32,
    /// The deciding ratios, as `measured` states them (empty where the
    /// target is a bound rather than a ratio).
    pub ratios: Vec<f64>,
}

impl Target {
    /// An issue-23 target.
    fn wide(name: String, measured: String, verdict: &'static str, ratios: Vec<f64>) -> Target {
        Target {
            name,
            measured,
            verdict,
            issue: 23,
            ratios,
        }
    }
}

pub(super) fn verdict(pass: bool, measurable: bool) -> &'static str {
    match (measurable, pass) {
        (false, _) => "N/A",
        (true, true) => "PASS",
        (true, false) => "FAIL",
    }
}

/// "model name" from /proc/cpuinfo, with the CPU count.
pub fn machine() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpus} vCPU, {model}")
}

fn find<'a>(s: &'a [ScenarioResult], name: &str) -> Option<&'a ScenarioResult> {
    s.iter().find(|x| x.name == name)
}

/// What `s` adds at p50 over `direct`, unpinned or pinned (µs), from the
/// p50 over all rounds.
fn added(s: &ScenarioResult, direct: &ScenarioResult, pinned: bool) -> f64 {
    if pinned {
        s.c1_pinned.p50_us - direct.c1_pinned.p50_us
    } else {
        s.c1.p50_us - direct.c1.p50_us
    }
}

fn phase(s: &ScenarioResult, pinned: bool) -> &PhaseResult {
    if pinned { &s.c1_pinned } else { &s.c1 }
}

/// What `s` adds at p50 over `direct`, from each one's best round (lowest
/// p50): the targets use this. Interference from outside (other guests on
/// the host, the machine's own chores) only ever adds time, and it hits
/// whole rounds, so a round's p50 is the intrinsic cost plus some noise
/// and the least of them is the closest to the cost; each scenario is
/// treated alike.
fn added_best(s: &ScenarioResult, direct: &ScenarioResult, pinned: bool) -> f64 {
    best_p50(phase(s, pinned)) - best_p50(phase(direct, pinned))
}

/// What `s` adds at p50 over `direct`: round by round, then the median of
/// the rounds (shown beside the best-round figure).
fn added_median(s: &ScenarioResult, direct: &ScenarioResult, pinned: bool) -> f64 {
    let (x, d) = (phase(s, pinned), phase(direct, pinned));
    let mut per_round: Vec<f64> = x
        .p50_rounds_us
        .iter()
        .zip(&d.p50_rounds_us)
        .map(|(a, b)| a - b)
        .collect();
    if per_round.is_empty() {
        return added(s, direct, pinned);
    }
    median(&mut per_round)
}

/// The median (the mean of the middle two for an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// 1 MB is 10^6 bytes; /proc counts KiB.
fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

/// The issue's targets, from one run's numbers.
pub fn targets(s: &[ScenarioResult], plan: &Plan) -> Vec<Target> {
    let (Some(direct), Some(ebpf), Some(ipt), Some(nginx), Some(haproxy)) = (
        find(s, "direct"),
        find(s, "sidetrack-ebpf"),
        find(s, "sidetrack-iptables"),
        find(s, "nginx"),
        find(s, "haproxy"),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pinned in [false, true] {
        let how = if pinned { "pinned" } else { "unpinned" };
        let (e, n, h, i) = (
            added_best(ebpf, direct, pinned),
            added_best(nginx, direct, pinned),
            added_best(haproxy, direct, pinned),
            added_best(ipt, direct, pinned),
        );
        let (em, nm, hm, im) = (
            added_median(ebpf, direct, pinned),
            added_median(nginx, direct, pinned),
            added_median(haproxy, direct, pinned),
            added_median(ipt, direct, pinned),
        );
        out.push(Target {
            name: format!("ebpf adds <= 1/3 of nginx's and haproxy's p50 ({how}, c=1)"),
            measured: format!(
                "best rounds: ebpf +{e:.1} µs, nginx +{n:.1} µs, haproxy +{h:.1} µs: ebpf/nginx {:.2}, ebpf/haproxy {:.2} (need <= 0.33); \
                 median of rounds: ebpf +{em:.1}, nginx +{nm:.1}, haproxy +{hm:.1}: {:.2}, {:.2}",
                e / n,
                e / h,
                em / nm,
                em / hm
            ),
            verdict: verdict(e <= n / 3.0 && e <= h / 3.0, n > 0.0 && h > 0.0),
            issue: 6,
            ratios: vec![e / n, e / h],
        });
        out.push(Target {
            name: format!("ebpf adds >= 20% less than iptables at p50 ({how}, c=1)"),
            measured: format!(
                "best rounds: ebpf +{e:.1} µs, iptables +{i:.1} µs: ebpf/iptables {:.2} (need <= 0.80); \
                 median of rounds: ebpf +{em:.1}, iptables +{im:.1}: {:.2}",
                e / i,
                em / im
            ),
            verdict: verdict(e <= 0.8 * i, i > 0.0),
            issue: 6,
            ratios: vec![e / i],
        });
    }
    let ratio = ebpf.c32.rps / haproxy.c32.rps;
    out.push(Target {
        name: "ebpf >= 1.25x haproxy's requests/s at c=32, one worker".into(),
        measured: format!(
            "ebpf {:.0} req/s, haproxy {:.0} req/s: {ratio:.2}x",
            ebpf.c32.rps, haproxy.c32.rps
        ),
        verdict: verdict(ratio >= 1.25, haproxy.c32.rps > 0.0),
        issue: 6,
        ratios: vec![ratio],
    });
    let idle = ebpf.idle_rss_kb.unwrap_or(0);
    out.push(Target {
        name: "idle RSS < 10 MB (sidetrack-ebpf)".into(),
        measured: format!("{:.1} MB", mb(idle)),
        verdict: verdict(mb(idle) < 10.0, idle > 0),
        issue: 6,
        ratios: Vec::new(),
    });
    let loaded = ebpf.open_low.peak_rss_kb.unwrap_or(0);
    out.push(Target {
        name: format!(
            "RSS < 20 MB at {} req/s over 100 connections (sidetrack-ebpf)",
            plan.open_low_rps
        ),
        measured: format!("{:.1} MB (peak of VmRSS sampled every 25 ms)", mb(loaded)),
        verdict: verdict(mb(loaded) < 20.0, loaded > 0),
        issue: 6,
        ratios: Vec::new(),
    });
    out
}

/// Sidetrack's three modes, for the issue-23 targets that hold for each.
const MODES: [&str; 3] = ["sidetrack-explicit", "sidetrack-iptables", "sidetrack-ebpf"];

/// Issue 23's targets (the wider bench), from the phases that ran; a target
/// whose numbers are missing (`--only`) is left out.
pub fn wide_targets(s: &[ScenarioResult], large: &[LargeResult]) -> Vec<Target> {
    let mut out = Vec::new();
    let haproxy = find(s, "haproxy");
    let modes = || MODES.into_iter().filter_map(|m| find(s, m));
    // New connection per request, c=32.
    if let Some(h) = haproxy.and_then(|h| h.new_conn_c32.as_ref()) {
        for x in modes() {
            let Some(p) = &x.new_conn_c32 else { continue };
            let r = p.rps / h.rps;
            out.push(Target::wide(
                format!(
                    "{}: new connection per request, c=32: connections/s >= haproxy's",
                    x.name
                ),
                format!(
                    "{:.0} /s, haproxy {:.0} /s: {r:.2}x (need >= 1.00)",
                    p.rps, h.rps
                ),
                verdict(r >= 1.0, h.rps > 0.0),
                vec![r],
            ));
            let cpu = |p: &PhaseResult| p.cpu_s_per_1k_requests.map(|c| c * 1e3);
            if let (Some(c), Some(ch)) = (cpu(p), cpu(h)) {
                let r = c / ch;
                out.push(Target::wide(
                    format!(
                        "{}: CPU per new connection at c=32 <= 2/3 of haproxy's",
                        x.name
                    ),
                    format!("{c:.1} µs, haproxy {ch:.1} µs: {r:.2} (need <= 0.67)"),
                    verdict(r <= 2.0 / 3.0, ch > 0.0),
                    vec![r],
                ));
            }
        }
    }
    // Nothing grows with the connections made: the worst round.
    for x in modes().filter(|x| !x.conn_growth.is_empty()) {
        let fds = x.conn_growth.iter().map(|g| g.fds()).max().unwrap_or(0);
        let rss = x.conn_growth.iter().map(|g| g.rss_kb()).max().unwrap_or(0);
        let maps = x.conn_growth.iter().filter_map(|g| g.map_entries()).max();
        let made: u64 = x
            .conn_growth
            .iter()
            .map(|g| g.connections)
            .min()
            .unwrap_or(0);
        let ok = fds <= GROWTH_FDS
            && mb(rss.max(0) as u64) <= GROWTH_MB
            && maps.is_none_or(|m| m <= GROWTH_ENTRIES);
        out.push(Target::wide(
            format!("{}: nothing grows with connections made (fds, RSS, eBPF map entries)", x.name),
            format!(
                "worst of {} round(s), each over >= {made} new connections: fds {fds:+}, RSS {:+.2} MB, eBPF map entries {} \
                 (need <= +{GROWTH_FDS}, <= +{GROWTH_MB} MB, <= +{GROWTH_ENTRIES})",
                x.conn_growth.len(),
                rss as f64 * 1024.0 / 1e6,
                maps.map_or("–".to_owned(), |m| format!("{m:+}")),
            ),
            verdict(ok, made > 0),
            Vec::new(),
        ));
    }
    // 10,000 idle + 100 active.
    if let Some(h) = haproxy.and_then(|h| h.many_conns.as_ref()) {
        for x in modes() {
            let Some(p) = &x.many_conns else { continue };
            let r = p.p99_us / h.p99_us;
            out.push(Target::wide(
                format!(
                    "{}: many idle + 100 active: active p99 <= haproxy's",
                    x.name
                ),
                format!(
                    "p99 {:.1} µs, haproxy {:.1} µs: {r:.2} (need <= 1.00)",
                    p.p99_us, h.p99_us
                ),
                verdict(r <= 1.0, h.p99_us > 0.0),
                vec![r],
            ));
            let rss = p.peak_rss_kb.unwrap_or(0);
            out.push(Target::wide(
                format!("{}: many idle + 100 active: RSS < 64 MB", x.name),
                format!("{:.1} MB (peak of VmRSS sampled every 25 ms)", mb(rss)),
                verdict(mb(rss) < 64.0, rss > 0),
                Vec::new(),
            ));
        }
    }
    // Two workers, c=256.
    if let Some(h) = haproxy.and_then(|h| h.workers2.as_ref()) {
        for x in modes() {
            let Some(p) = &x.workers2 else { continue };
            let r = p.rps / h.rps;
            out.push(Target::wide(
                format!(
                    "{}: two workers, c=256: requests/s >= 1.3x haproxy's (nbthread 2)",
                    x.name
                ),
                format!(
                    "{:.0} req/s, haproxy {:.0} req/s: {r:.2}x (need >= 1.30)",
                    p.rps, h.rps
                ),
                verdict(r >= 1.3, h.rps > 0.0),
                vec![r],
            ));
        }
    }
    // Keep-alive c=32, explicit and iptables.
    if let Some(h) = haproxy {
        for x in modes().filter(|x| x.name != "sidetrack-ebpf") {
            let r = x.c32.rps / h.c32.rps;
            out.push(Target::wide(
                format!("{}: keep-alive c=32: requests/s >= 1.1x haproxy's", x.name),
                format!(
                    "{:.0} req/s, haproxy {:.0} req/s: {r:.2}x (need >= 1.10)",
                    x.c32.rps, h.c32.rps
                ),
                verdict(r >= 1.1, h.c32.rps > 0.0),
                vec![r],
            ));
        }
    }
    let direct = find(s, "direct");
    // Per-pod CPU cgroups.
    if let (Some(d), Some(e), Some(n), Some(h)) =
        (direct, find(s, "sidetrack-ebpf"), find(s, "nginx"), haproxy)
        && [d, e, n, h].iter().all(|x| x.c1_pinned_pods.is_some())
    {
        let pods = |x: &ScenarioResult| {
            best_p50(x.c1_pinned_pods.as_ref().expect("checked"))
                - best_p50(d.c1_pinned_pods.as_ref().expect("checked"))
        };
        let (pe, pn, ph) = (pods(e), pods(n), pods(h));
        out.push(Target::wide(
            "sidetrack-ebpf: per-pod CPU cgroups: adds <= 1/2 of nginx's and haproxy's pinned p50".into(),
            format!(
                "best rounds: ebpf +{pe:.1} µs, nginx +{pn:.1} µs, haproxy +{ph:.1} µs: {:.2}, {:.2} (need <= 0.50)",
                pe / pn,
                pe / ph
            ),
            verdict(pe <= pn / 2.0 && pe <= ph / 2.0, pn > 0.0 && ph > 0.0),
            vec![pe / pn, pe / ph],
        ));
    }
    // Against Pingora.
    if let (Some(d), Some(e), Some(p)) = (direct, find(s, "sidetrack-ebpf"), find(s, "pingora")) {
        let (ae, ap) = (added_best(e, d, true), added_best(p, d, true));
        out.push(Target::wide(
            "sidetrack-ebpf: adds <= 1/3 of pingora's pinned p50".into(),
            format!(
                "best rounds: ebpf +{ae:.1} µs, pingora +{ap:.1} µs: {:.2} (need <= 0.33)",
                ae / ap
            ),
            verdict(ae <= ap / 3.0, ap > 0.0),
            vec![ae / ap],
        ));
        let r = e.c32.rps / p.c32.rps;
        out.push(Target::wide(
            "sidetrack-ebpf: >= 1.25x pingora's requests/s at c=32".into(),
            format!(
                "{:.0} req/s, pingora {:.0} req/s: {r:.2}x (need >= 1.25)",
                e.c32.rps, p.c32.rps
            ),
            verdict(r >= 1.25, p.c32.rps > 0.0),
            vec![r],
        ));
    }
    // Large bodies: explicit and iptables at >= 90% of direct.
    let gbs = |name: &str, size: u64, upload: bool| {
        large
            .iter()
            .find(|l| l.name == name && l.body_bytes == size && l.upload == upload)
            .map(|l| l.result.gb_per_s)
    };
    for name in ["sidetrack-explicit splice", "sidetrack-iptables"] {
        for upload in [false, true] {
            let sizes = [1u64 << 20, 64 << 20];
            let pairs: Vec<(f64, f64)> = sizes
                .iter()
                .filter_map(|&z| Some((gbs(name, z, upload)?, gbs("direct", z, upload)?)))
                .collect();
            if pairs.len() != sizes.len() {
                continue;
            }
            let ratios: Vec<f64> = pairs.iter().map(|(x, d)| x / d).collect();
            out.push(Target::wide(
                format!(
                    "{name}: large bodies {}: >= 0.9x direct's GB/s, 1 MiB and 64 MiB",
                    if upload { "up" } else { "down" }
                ),
                format!(
                    "1 MiB {:.2} / {:.2} GB/s: {:.2}; 64 MiB {:.2} / {:.2} GB/s: {:.2} (need >= 0.90)",
                    pairs[0].0, pairs[0].1, ratios[0], pairs[1].0, pairs[1].1, ratios[1]
                ),
                verdict(ratios.iter().all(|&r| r >= 0.9), pairs.iter().all(|p| p.1 > 0.0)),
                ratios,
            ));
        }
    }
    out
}

/// "Nothing grows": bounds on what the new-connection phases may leave
/// behind (a pooled server connection or two, allocator slack).
const GROWTH_FDS: i64 = 8;
const GROWTH_MB: f64 = 1.0;
const GROWTH_ENTRIES: i64 = 8;

/// A phase's best round's p50 (µs).
fn best_p50(p: &PhaseResult) -> f64 {
    p.p50_rounds_us
        .iter()
        .copied()
        .reduce(f64::min)
        .unwrap_or(p.p50_us)
}

/// `--baseline`: the revision, and each current scenario against its
/// baseline twin.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    pub rev: baseline::Rev,
    pub pairs: Vec<BaselinePair>,
}

/// One scenario against the same scenario from the baseline revision.
/// Ratios are current / baseline.
#[derive(Clone, Debug, Serialize)]
pub struct BaselinePair {
    pub current: &'static str,
    pub baseline: &'static str,
    pub pinned: Versus,
    pub unpinned: Versus,
    pub c32_rps: [f64; 2],
    pub c32_rps_ratio: f64,
    /// The proxy's CPU per request sent at c=32 (µs).
    pub cpu_us_per_request: Option<[f64; 2]>,
    pub cpu_per_request_ratio: Option<f64>,
}

/// +p50 over direct at c=1 (µs), current and baseline, as the targets take
/// it: from each one's best round, and as the median of per-round
/// differences; then current minus baseline, and current / baseline (`None`
/// unless the baseline adds something: unpinned, a hop can come out faster
/// than direct).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Versus {
    pub best_us: [f64; 2],
    pub best_diff_us: f64,
    pub best_ratio: Option<f64>,
    pub median_us: [f64; 2],
    pub median_diff_us: f64,
    pub median_ratio: Option<f64>,
}

impl Versus {
    fn new(
        current: &ScenarioResult,
        base: &ScenarioResult,
        direct: &ScenarioResult,
        pinned: bool,
    ) -> Versus {
        let (b, bb) = (
            added_best(current, direct, pinned),
            added_best(base, direct, pinned),
        );
        let (m, mb) = (
            added_median(current, direct, pinned),
            added_median(base, direct, pinned),
        );
        Versus {
            best_us: [b, bb],
            best_diff_us: b - bb,
            best_ratio: (bb > 0.0).then(|| b / bb),
            median_us: [m, mb],
            median_diff_us: m - mb,
            median_ratio: (mb > 0.0).then(|| m / mb),
        }
    }
}

/// The pairs of `Scenario::BASELINE` that ran, with `direct`.
pub fn baseline_pairs(s: &[ScenarioResult]) -> Vec<BaselinePair> {
    pairs(s, &Scenario::BASELINE)
}

/// The pairs of `Scenario::COMPARED` that ran: what a feature costs, the
/// same binary with and without it, side by side in one run.
pub fn feature_pairs(s: &[ScenarioResult]) -> Vec<BaselinePair> {
    pairs(s, &Scenario::COMPARED)
}

fn pairs(s: &[ScenarioResult], which: &[(Scenario, Scenario)]) -> Vec<BaselinePair> {
    let Some(direct) = find(s, "direct") else {
        return Vec::new();
    };
    let cpu = |x: &ScenarioResult| x.c32.cpu_s_per_1k_requests.map(|c| c * 1e3);
    which
        .iter()
        .filter_map(|&(c, b)| {
            let (current, base) = (find(s, c.name())?, find(s, b.name())?);
            let cpu_us = cpu(current).zip(cpu(base)).map(|(c, b)| [c, b]);
            Some(BaselinePair {
                current: current.name,
                baseline: base.name,
                pinned: Versus::new(current, base, direct, true),
                unpinned: Versus::new(current, base, direct, false),
                c32_rps: [current.c32.rps, base.c32.rps],
                c32_rps_ratio: current.c32.rps / base.c32.rps,
                cpu_us_per_request: cpu_us,
                cpu_per_request_ratio: cpu_us.map(|[c, b]| c / b),
            })
        })
        .collect()
}

/// Criterion's results as `name: [low est high]` lines. Criterion prints
/// the name and `time:` on one line, or the name alone on the line before
/// when it is long.
pub fn criterion_summary(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some((head, time)) = line.split_once("time:") {
            let head = head.trim();
            let n = if head.is_empty() { name.as_str() } else { head };
            out.push(format!("{n}: {}", time.trim()));
        } else if !line.starts_with(' ')
            && !trimmed.is_empty()
            && !trimmed.starts_with("Benchmarking")
        {
            name = trimmed.to_owned();
        }
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

/// The tables, in Markdown.
pub fn tables(r: &Results) -> String {
    let mut t = String::new();
    let s = &r.scenarios;
    let direct = find(s, "direct");
    let (nginx, haproxy) = (find(s, "nginx"), find(s, "haproxy"));
    let _ = writeln!(
        t,
        "Machine: {}, Linux {}. {} round(s); c=1 phases {} s each per round, c=32 {} s, open loop {} s. \
         Load average before / after: {} / {}. Guest halt polling: {}.{}\n",
        r.machine,
        r.kernel,
        r.plan.rounds,
        r.plan.c1_secs,
        r.plan.c32_secs,
        r.plan.open_secs,
        r.loadavg_before,
        r.loadavg_after,
        match (r.halt_poll.before_ns, r.halt_poll.during_ns) {
            (Some(b), Some(d)) if b != d => format!("{d} ns during the run (was {b} ns)"),
            (Some(b), _) => format!("{b} ns"),
            (None, _) => "no knob".to_owned(),
        },
        r.baseline.as_ref().map_or(String::new(), |b| format!(
            " Baseline (`baseline-*`): {} (`--baseline {}`).",
            b.rev.title(),
            b.rev.given
        ))
    );
    let _ = writeln!(
        t,
        "Latency, closed loop, 1 keep-alive connection (µs; +p50: added over direct):\n"
    );
    let _ = writeln!(
        t,
        "| scenario | p50 | p90 | p99 | p99.9 | +p50 | pinned p50 | pinned p99 | pinned p99.9 | pinned +p50 |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for x in s {
        let (a, ap) = direct.map_or((0.0, 0.0), |d| (added(x, d, false), added(x, d, true)));
        let _ = writeln!(
            t,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {a:+.1} | {:.1} | {:.1} | {:.1} | {ap:+.1} |",
            x.name,
            x.c1.p50_us,
            x.c1.p90_us,
            x.c1.p99_us,
            x.c1.p999_us,
            x.c1_pinned.p50_us,
            x.c1_pinned.p99_us,
            x.c1_pinned.p999_us
        );
    }
    if let Some(d) = direct.filter(|d| d.c1_pods.is_some()) {
        pods_table(&mut t, s, d);
    }
    let _ = writeln!(
        t,
        "\nThroughput and cost (c=32 closed loop; open loop over 100 connections, latency from the intended send time):\n"
    );
    let _ = writeln!(
        t,
        "| scenario | req/s c=32 | p99 c=32 µs | CPU ms / 1k req (c=32) | {lo} rps p50 / p99 µs | {hi} rps p50 / p99 µs | {hi} rps achieved | idle RSS MB | RSS MB @ {lo} rps | peak RSS MB |",
        lo = r.plan.open_low_rps,
        hi = r.plan.open_high_rps
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for x in s {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.1} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} | {} | {} | {} |",
            x.name,
            x.c32.rps,
            x.c32.p99_us,
            opt(x.c32.cpu_s_per_1k_requests.map(|c| c * 1e3), 1),
            x.open_low.p50_us,
            x.open_low.p99_us,
            x.open_high.p50_us,
            x.open_high.p99_us,
            x.open_high.rps,
            opt(x.idle_rss_kb.map(mb), 1),
            opt(x.open_low.peak_rss_kb.map(mb), 1),
            opt(x.peak_hwm_kb.map(mb), 1),
        );
    }
    let _ = writeln!(
        t,
        "\nRatios (added p50 latency over direct, and c=32 throughput):\n"
    );
    let _ = writeln!(
        t,
        "| scenario | +p50 / nginx's | +p50 / haproxy's | pinned +p50 / nginx's | pinned +p50 / haproxy's | req/s / nginx's | req/s / haproxy's |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|");
    if let (Some(d), Some(n), Some(h)) = (direct, nginx, haproxy) {
        for x in s.iter().filter(|x| x.name != "direct") {
            let _ = writeln!(
                t,
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                x.name,
                added(x, d, false) / added(n, d, false),
                added(x, d, false) / added(h, d, false),
                added(x, d, true) / added(n, d, true),
                added(x, d, true) / added(h, d, true),
                x.c32.rps / n.c32.rps,
                x.c32.rps / h.c32.rps,
            );
        }
    }
    if let Some(b) = &r.baseline {
        baseline_lines(&mut t, b, r.plan.rounds);
    }
    if !r.costs.is_empty() {
        let _ = writeln!(
            t,
            "\nWhat features cost (with / without, side by side in this run; +p50 over direct at c=1 from each one's best of {} round(s), \
             the median of per-round differences beside it; ratios with / without):\n",
            r.plan.rounds
        );
        pair_lines(&mut t, &r.costs);
    }
    if let (Some(d), Some(explicit), Some(relay)) =
        (direct, find(s, "sidetrack-explicit"), find(s, "tcp-relay"))
    {
        let _ = writeln!(
            t,
            "\nSidetrack's HTTP handling over a bare epoll byte pump (`tcp-relay`, the same system calls), pinned: \
             +{:.1} µs per request (sidetrack-explicit +{:.1}, tcp-relay +{:.1}; best rounds).",
            added_best(explicit, d, true) - added_best(relay, d, true),
            added_best(explicit, d, true),
            added_best(relay, d, true)
        );
    }
    // The runtime floors, when run (`--only ...,tokio-relay,uring-relay`):
    // the same pump on another event loop, against the epoll one.
    if let (Some(d), Some(relay)) = (direct, find(s, "tcp-relay")) {
        for (name, what) in [
            ("tokio-relay", "tokio's runtime"),
            ("uring-relay", "io_uring"),
        ] {
            if let Some(x) = find(s, name) {
                let _ = writeln!(
                    t,
                    "\nThe same byte pump on {what} (`{name}`) against epoll (`tcp-relay`), best rounds: \
                     {:+.1} µs per request pinned ({name} +{:.1}, tcp-relay +{:.1}), {:+.1} µs unpinned.",
                    added_best(x, d, true) - added_best(relay, d, true),
                    added_best(x, d, true),
                    added_best(relay, d, true),
                    added_best(x, d, false) - added_best(relay, d, false),
                );
            }
        }
    }
    // The floor of a userspace hop under the eBPF programs, when run.
    if let (Some(d), Some(ebpf), Some(tunnel)) = (
        direct,
        find(s, "sidetrack-ebpf"),
        find(s, "sidetrack-ebpf-tunnel"),
    ) {
        let _ = writeln!(
            t,
            "\nSidetrack's HTTP handling in eBPF mode, over the same proxy tunnelling the connection as opaque bytes \
             (`sidetrack-ebpf-tunnel`: same event loop, interception and sk_msg shortcut, no HTTP work), best rounds: \
             {:+.1} µs per request pinned (sidetrack-ebpf +{:.1}, tunnel +{:.1}), {:+.1} µs unpinned.",
            added_best(ebpf, d, true) - added_best(tunnel, d, true),
            added_best(ebpf, d, true),
            added_best(tunnel, d, true),
            added_best(ebpf, d, false) - added_best(tunnel, d, false),
        );
    }
    // What the yield before a park buys, when run.
    if let (Some(d), Some(ebpf), Some(no_yield)) = (
        direct,
        find(s, "sidetrack-ebpf"),
        find(s, "sidetrack-ebpf-no-yield"),
    ) {
        let _ = writeln!(
            t,
            "\nThe yield before a park (`yield_before_wait`) in eBPF mode, best rounds: sidetrack-ebpf +{:.1} µs \
             pinned against +{:.1} µs without it (`sidetrack-ebpf-no-yield`), +{:.1} against +{:.1} µs unpinned.",
            added_best(ebpf, d, true),
            added_best(no_yield, d, true),
            added_best(ebpf, d, false),
            added_best(no_yield, d, false),
        );
    }
    if let Some(c) = r.machine_costs {
        let _ = write!(
            t,
            "\nWhat a hop through a process costs here before it does any work (CPU {PINNED_CPU}, measured at the start): \
             a context switch {:.2} µs, a system call {:.2} µs. Pinned, a proxied request takes two more switches than a \
             direct one (client → proxy → server → proxy → client), {:.1} µs, and an epoll hop's six system calls {:.1} µs.",
            c.switch_ns / 1e3,
            c.syscall_ns / 1e3,
            2.0 * c.switch_ns / 1e3,
            6.0 * c.syscall_ns / 1e3
        );
        if let (Some(d), Some(n)) = (direct, nginx) {
            let _ = write!(
                t,
                " A third of nginx's pinned hop is {:.1} µs (best round).",
                added_best(n, d, true) / 3.0
            );
        }
        let _ = writeln!(t);
    }
    let _ = writeln!(
        t,
        "\nProxy CPU per request (µs; user space / kernel, all the proxy's processes, per request sent) and its threads' context switches per request (blocked + preempted):\n"
    );
    let _ = writeln!(
        t,
        "| scenario | c=1 pinned user | c=1 pinned kernel | c=1 pinned switches | c=32 user | c=32 kernel | c=32 switches |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|");
    for x in s.iter().filter(|x| x.c32.cpu_us_per_request.is_some()) {
        let (p, c) = (x.c1_pinned.cpu_us_per_request, x.c32.cpu_us_per_request);
        let switches = |c: proc::Cpu| {
            format!(
                "{:.2} + {:.2}",
                c.voluntary_switches, c.involuntary_switches
            )
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} |",
            x.name,
            opt(p.map(|c| c.user), 2),
            opt(p.map(|c| c.sys), 2),
            p.map_or("–".to_owned(), switches),
            opt(c.map(|c| c.user), 2),
            opt(c.map(|c| c.sys), 2),
            c.map_or("–".to_owned(), switches)
        );
    }
    wide_tables(&mut t, s, r.plan.idle_conns);
    large_table(&mut t, &r.large);
    let _ = writeln!(
        t,
        "\nDtab (criterion, `cargo bench -p sidetrack --bench dtab`):\n"
    );
    for line in &r.dtab {
        let _ = writeln!(t, "    {line}");
    }
    let _ = writeln!(
        t,
        "\nTargets (issues 6 and 23; added latency from each scenario's best of {} round(s), the median of per-round differences beside it):\n",
        r.plan.rounds
    );
    for target in &r.targets {
        let _ = writeln!(
            t,
            "- {} {}: {}",
            target.verdict, target.name, target.measured
        );
    }
    let errors: u64 = s
        .iter()
        .flat_map(|x| {
            [&x.c1, &x.c1_pinned, &x.c32, &x.open_low, &x.open_high]
                .into_iter()
                .chain(x.c1_pods.as_ref())
                .chain(x.c1_pinned_pods.as_ref())
                .chain(x.wide_phases())
        })
        .map(|p| p.errors)
        .sum::<u64>()
        + r.large.iter().map(|l| l.result.errors).sum::<u64>();
    if !r.http2.is_empty() {
        let _ = write!(t, "\n{}", super::h2::table(&r.http2));
    }
    let _ = writeln!(
        t,
        "\nErrors: {errors}. Builds {:.0} s, measuring {:.0} s.",
        r.build_secs, r.measure_secs
    );
    t
}

/// The issue-23 tables: new connections, what they leave behind, many
/// connections, two workers. Rows for the scenarios that ran the phases.
fn wide_tables(t: &mut String, s: &[ScenarioResult], idle: usize) {
    let cpu = |p: &PhaseResult| opt(p.cpu_s_per_1k_requests.map(|c| c * 1e3), 1);
    let lat = |p: &PhaseResult| format!("{:.0} | {:.1} / {:.1}", p.rps, p.p50_us, p.p99_us);
    let rows: Vec<&ScenarioResult> = s.iter().filter(|x| x.new_conn_c1.is_some()).collect();
    if !rows.is_empty() {
        let _ = writeln!(
            t,
            "\nNew connection per request (closed loop; latency from before the connect to the last byte, µs; CPU: the proxy's per request, µs). \
             `close`: every request on a fresh client connection with `Connection: close`; `server close`: client keep-alive, the server \
             answers `Connection: close`, so the proxy connects anew for each request:\n"
        );
        let _ = writeln!(
            t,
            "| scenario | close c=1 conn/s | p50 / p99 | close c=32 conn/s | p50 / p99 | CPU / conn c=32 | server close c=1 req/s | p50 / p99 | server close c=32 req/s | p50 / p99 | CPU / req c=32 |"
        );
        let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for x in &rows {
            let (Some(a), Some(b), Some(c), Some(d)) = (
                &x.new_conn_c1,
                &x.new_conn_c32,
                &x.backend_close_c1,
                &x.backend_close_c32,
            ) else {
                continue;
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} |",
                x.name,
                lat(a),
                lat(b),
                cpu(b),
                lat(c),
                lat(d),
                cpu(d)
            );
        }
    }
    let grown: Vec<&ScenarioResult> = s.iter().filter(|x| !x.conn_growth.is_empty()).collect();
    if !grown.is_empty() {
        let _ = writeln!(
            t,
            "\nWhat the proxy holds before and after the new-connection phases (last round; growth: the worst round): open descriptors \
             (/proc/PID/fd), VmRSS, and the entries of the eBPF maps its process holds (bpftool):\n"
        );
        let _ = writeln!(
            t,
            "| scenario | new connections | fds | fds growth | RSS MB | RSS growth MB | eBPF map entries | map growth |"
        );
        let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|");
        for x in grown {
            let last = x.conn_growth.last().expect("not empty");
            let maps = |sn: &super::resources::Snapshot| {
                sn.ebpf_maps.as_ref().map_or("–".to_owned(), |m| {
                    if m.is_empty() {
                        "none".to_owned()
                    } else {
                        m.iter()
                            .map(|(n, c)| format!("{n} {c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                })
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} → {} | {:+} | {:.1} → {:.1} | {:+.2} | {} → {} | {} |",
                x.name,
                last.connections,
                last.before.fds,
                last.after.fds,
                x.conn_growth.iter().map(|g| g.fds()).max().unwrap_or(0),
                mb(last.before.rss_kb),
                mb(last.after.rss_kb),
                x.conn_growth.iter().map(|g| g.rss_kb()).max().unwrap_or(0) as f64 * 1024.0 / 1e6,
                maps(&last.before),
                maps(&last.after),
                x.conn_growth
                    .iter()
                    .filter_map(|g| g.map_entries())
                    .max()
                    .map_or("–".to_owned(), |m| format!("{m:+}")),
            );
        }
    }
    let many: Vec<&ScenarioResult> = s.iter().filter(|x| x.many_conns.is_some()).collect();
    if !many.is_empty() {
        let _ = writeln!(
            t,
            "\nMany connections: {} idle keep-alive connections held open (one request each first), 100 active at a fixed rate \
             (open loop, latency from the intended send time, µs); the proxy's peak VmRSS, and its CPU from when the idle ones were up:\n",
            idle
        );
        let _ = writeln!(
            t,
            "| scenario | active p50 | active p99 | p99.9 | achieved req/s | peak RSS MB | CPU % of a core | CPU µs / active req | errors |"
        );
        let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for x in many {
            let p = x.many_conns.as_ref().expect("filtered");
            let per_req = p.cpu_s_per_1k_requests.map(|c| c * 1e3);
            let _ = writeln!(
                t,
                "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {} |",
                x.name,
                p.p50_us,
                p.p99_us,
                p.p999_us,
                p.rps,
                opt(p.peak_rss_kb.map(mb), 1),
                opt(per_req.map(|c| c * p.rps / 1e4), 1),
                opt(per_req, 1),
                p.errors
            );
        }
    }
    let two: Vec<&ScenarioResult> = s.iter().filter(|x| x.workers2.is_some()).collect();
    if !two.is_empty() {
        let h = find(s, "haproxy").and_then(|h| h.workers2.as_ref());
        let _ = writeln!(
            t,
            "\nTwo workers (Sidetrack `workers: 2`, nginx `worker_processes 2`, haproxy `nbthread 2`, Pingora `threads: 2`), closed loop over \
             256 keep-alive connections; the load generator shares the two CPUs with them as in every phase:\n"
        );
        let _ = writeln!(
            t,
            "| scenario | req/s | p50 µs | p99 µs | CPU µs / req | req/s / haproxy's |"
        );
        let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|");
        for x in two {
            let p = x.workers2.as_ref().expect("filtered");
            let _ = writeln!(
                t,
                "| {} | {:.0} | {:.1} | {:.1} | {} | {} |",
                x.name,
                p.rps,
                p.p50_us,
                p.p99_us,
                cpu(p),
                opt(h.map(|h| p.rps / h.rps), 2)
            );
        }
    }
}

/// Large bodies: GB/s per path, down and up, and each over direct's.
fn large_table(t: &mut String, large: &[LargeResult]) {
    if large.is_empty() {
        return;
    }
    let _ = writeln!(
        t,
        "\nLarge bodies, one connection, back to back (GB/s of body; down: `GET /bytes/N`, up: a POST of N bytes; in brackets, over direct's):\n"
    );
    let cols = [
        (false, 1u64 << 20),
        (false, 64 << 20),
        (true, 1 << 20),
        (true, 64 << 20),
    ];
    let _ = writeln!(
        t,
        "| path | down 1 MiB | down 64 MiB | up 1 MiB | up 64 MiB |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|");
    let get = |name: &str, (upload, size): (bool, u64)| {
        large
            .iter()
            .find(|l| l.name == name && l.body_bytes == size && l.upload == upload)
            .map(|l| l.result.gb_per_s)
    };
    let mut names: Vec<&str> = large.iter().map(|l| l.name.as_str()).collect();
    names.dedup();
    for name in names {
        let _ = write!(t, "| {name} |");
        for c in cols {
            let cell = match (get(name, c), get("direct", c)) {
                (Some(v), Some(d)) if name != "direct" && d > 0.0 => {
                    format!("{v:.2} ({:.2})", v / d)
                }
                (Some(v), _) => format!("{v:.2}"),
                (None, _) => "–".to_owned(),
            };
            let _ = write!(t, " {cell} |");
        }
        let _ = writeln!(t);
    }
}

/// `--pod-cgroups`: the c=1 rows again with client, proxy and server each in
/// a CPU cgroup of its own, beside the shared group's.
fn pods_table(t: &mut String, s: &[ScenarioResult], direct: &ScenarioResult) {
    let _ = writeln!(
        t,
        "\nThe same with the client pod, the proxy and the server pod each in a CPU cgroup of its own (`--pod-cgroups`), \
         as under Kubernetes; beside it, from the table above, all three in one (µs; +p50 over direct in the same layout; \
         switches: the proxy's threads', per request, blocked + preempted):\n"
    );
    let _ = writeln!(
        t,
        "| scenario | p50 | p99 | +p50 | shared +p50 | pinned p50 | pinned p99 | pinned +p50 | shared pinned +p50 | pinned switches | shared pinned switches |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let (Some(dp), Some(dpp)) = (&direct.c1_pods, &direct.c1_pinned_pods) else {
        return;
    };
    let switches = |p: &PhaseResult| {
        p.cpu_us_per_request.map_or("–".to_owned(), |c| {
            format!(
                "{:.2} + {:.2}",
                c.voluntary_switches, c.involuntary_switches
            )
        })
    };
    for x in s {
        let (Some(p), Some(pp)) = (&x.c1_pods, &x.c1_pinned_pods) else {
            continue;
        };
        let _ = writeln!(
            t,
            "| {} | {:.1} | {:.1} | {:+.1} | {:+.1} | {:.1} | {:.1} | {:+.1} | {:+.1} | {} | {} |",
            x.name,
            p.p50_us,
            p.p99_us,
            p.p50_us - dp.p50_us,
            added(x, direct, false),
            pp.p50_us,
            pp.p99_us,
            pp.p50_us - dpp.p50_us,
            added(x, direct, true),
            switches(pp),
            switches(&x.c1_pinned),
        );
    }
}

/// `--baseline`: a line per pair of current and baseline scenarios.
fn baseline_lines(t: &mut String, b: &Baseline, rounds: usize) {
    let _ = writeln!(
        t,
        "\nAgainst the baseline, {} (current / baseline; +p50 over direct at c=1 from each one's best of {rounds} round(s), \
         the median of per-round differences beside it; ratios current / baseline):\n",
        b.rev.title()
    );
    if b.pairs.is_empty() {
        let _ = writeln!(
            t,
            "- no comparison: it needs `direct` and `sidetrack-explicit` or `sidetrack-ebpf` in the run"
        );
    }
    pair_lines(t, &b.pairs);
}

/// A line per pair: +p50 pinned and unpinned, c=32 throughput, CPU.
fn pair_lines(t: &mut String, pairs: &[BaselinePair]) {
    let ratio = |r: Option<f64>| r.map_or("n/a".to_owned(), |r| format!("{r:.2}x"));
    let versus = |v: &Versus| {
        format!(
            "{:+.1} / {:+.1} µs ({:+.1} µs, {}; median of rounds {:+.1} / {:+.1}: {:+.1} µs, {})",
            v.best_us[0],
            v.best_us[1],
            v.best_diff_us,
            ratio(v.best_ratio),
            v.median_us[0],
            v.median_us[1],
            v.median_diff_us,
            ratio(v.median_ratio)
        )
    };
    for p in pairs {
        let cpu = p.cpu_us_per_request.map_or("–".to_owned(), |[c, base]| {
            format!("{c:.2} / {base:.2} µs ({})", ratio(p.cpu_per_request_ratio))
        });
        let _ = writeln!(
            t,
            "- {} / {}: pinned +p50 {}; unpinned +p50 {}; c=32 {:.0} / {:.0} req/s ({:.2}x); CPU per request at c=32 {cpu}",
            p.current,
            p.baseline,
            versus(&p.pinned),
            versus(&p.unpinned),
            p.c32_rps[0],
            p.c32_rps[1],
            p.c32_rps_ratio,
        );
    }
}

/// Prints the tables and writes table.md, results.json and latency.svg.
pub fn write(r: &Results, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let text = tables(r);
    println!("{text}");
    fs::write(dir.join("table.md"), &text)?;
    let json = serde_json::to_string_pretty(r)?;
    fs::write(dir.join("results.json"), json)?;
    plot(&r.scenarios, &dir.join("latency.svg")).context("plot latency.svg")?;
    crate::cmd::note(format!(
        "wrote {0}/results.json, {0}/latency.svg, {0}/table.md",
        dir.display()
    ));
    Ok(())
}

/// Which phase a plot panel shows.
type Pick = fn(&ScenarioResult) -> &PhaseResult;

const PERCENTILES: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

fn points(p: &PhaseResult) -> [f64; 4] {
    [p.p50_us, p.p90_us, p.p99_us, p.p999_us]
}

/// Two panels (c=1 unpinned, c=1 pinned): one line per scenario over the
/// percentiles, log scale.
fn plot(s: &[ScenarioResult], path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Debug| anyhow!("{e:?}");
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 2));
    let sides: [(&str, Pick); 2] = [
        ("c=1 latency, unpinned (µs)", |x| &x.c1),
        (
            "c=1 latency, client + proxy + server on one CPU (µs)",
            |x| &x.c1_pinned,
        ),
    ];
    for (panel, (title, pick)) in panels.iter().zip(sides) {
        let all: Vec<f64> = s.iter().flat_map(|x| points(pick(x))).collect();
        let lo = all.iter().copied().fold(f64::MAX, f64::min).max(1.0) * 0.8;
        let hi = all.iter().copied().fold(1.0, f64::max) * 1.25;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0i32..3i32, (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_labels(4)
            .x_label_formatter(&|x| PERCENTILES.get(*x as usize).unwrap_or(&"").to_string())
            .y_labels(20)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("µs")
            .draw()
            .map_err(|e| err(&e))?;
        for (k, x) in s.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let pts: Vec<(i32, f64)> = points(pick(x))
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i as i32, v))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(x.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_lines() {
        let text = "Benchmarking dtab/parse\ndtab/parse             time:   [1.0 µs 1.1 µs 1.2 µs]\n\
                    dtab/a/very/long/benchmark/name\n                        time:   [5.0 ns 5.1 ns 5.2 ns]\n\
                    Found 3 outliers\n";
        assert_eq!(
            criterion_summary(text),
            vec![
                "dtab/parse: [1.0 µs 1.1 µs 1.2 µs]",
                "dtab/a/very/long/benchmark/name: [5.0 ns 5.1 ns 5.2 ns]"
            ]
        );
    }
}
