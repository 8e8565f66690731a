//! `sidetrack replay`: captured requests sent again, to another version
//! through a running proxy (an `l5d-dtab` override per request) or
//! straight to an address, and the new answers compared with the
//! recorded ones per endpoint.
//!
//! - [`plan`]: which entries, the request each becomes, when it is due.
//! - [`client`]: one blocking exchange, bounded in time and size.
//! - [`report`]: the comparison (the diff engine's) and the counts.
//!
//! Exit status: 0 when every replayed answer matched, 1 when one differed
//! or failed, 2 when the capture could not be read or the flags are wrong.

pub mod client;
pub mod plan;
pub mod report;

use std::{
    io::{BufRead, BufReader, IsTerminal},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use clap::Args;

use crate::{
    diff::{DiffSettings, endpoint},
    observe::capture::{
        har::{Entry, unix_ms},
        ring::list_segments,
    },
};

use plan::{Select, Skip, Via};
use report::{Outcome, Report, Tally};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture directory (the proxy's `capture.dir`).
    #[arg(long)]
    pub capture: PathBuf,
    /// Only requests captured in this last while (`90s`, `15m`, `2h`, `1d`).
    #[arg(long, value_parser = super::stage::parse_ttl)]
    pub since: Option<Duration>,
    /// Only requests captured at least this long ago.
    #[arg(long, value_parser = super::stage::parse_ttl)]
    pub until: Option<Duration>,
    /// Only these logical names (prefixes, like `/svc/world`); repeatable.
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// Only these methods; repeatable.
    #[arg(long = "method")]
    pub methods: Vec<String>,
    /// Through a proxy: where each request's logical name goes, as
    /// `NAME => TO` in an `l5d-dtab` override (`/srv/world-v2`), or a
    /// whole dtab (`/host/world => /srv/world-v2`).
    #[arg(long)]
    pub to: Option<String>,
    /// A running proxy's listen address (`127.0.0.1:4140`): requests go
    /// through it, with the override.
    #[arg(long, conflicts_with = "addr", required_unless_present = "addr")]
    pub proxy: Option<String>,
    /// An address to send the requests to straight, as captured.
    #[arg(long)]
    pub addr: Option<String>,
    /// Pacing: `original`, as far apart as they were captured (the
    /// default unless --rate is given).
    #[arg(long, value_enum, conflicts_with = "rate")]
    pub pace: Option<Pace>,
    /// At most this many requests a second (`50` or `50/s`), as fast as
    /// that allows.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Replay methods that may write (POST, PUT, PATCH, DELETE, ...);
    /// without it only GET, HEAD, OPTIONS and TRACE are sent.
    #[arg(long)]
    pub allow_writes: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// The longest one exchange may take.
    #[arg(long, default_value = "10s", value_parser = super::stage::parse_ttl)]
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pace {
    Original,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.strip_suffix("/s").unwrap_or(s);
    match n.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?}: expected requests a second, like 50 or 50/s"
        )),
    }
}

/// One request to send.
struct Job {
    endpoint: String,
    entry: Entry,
    request: Vec<u8>,
    due: Duration,
}

impl ReplayArgs {
    pub fn run(self) -> ExitCode {
        match self.replay() {
            Ok(report) => {
                if self.json {
                    match serde_json::to_string_pretty(&report) {
                        Ok(text) => println!("{text}"),
                        Err(e) => {
                            eprintln!("sidetrack replay: {e}");
                            return ExitCode::from(2);
                        }
                    }
                } else {
                    print!("{}", report::render(&report));
                }
                if report.differing + report.errors > 0 {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("sidetrack replay: {e}");
                ExitCode::from(2)
            }
        }
    }

    fn target(&self) -> Result<(SocketAddr, Via), String> {
        match (&self.proxy, &self.addr) {
            (Some(proxy), None) => {
                let to = self
                    .to
                    .clone()
                    .ok_or("--proxy needs --to: where the captured names go")?;
                Ok((client::resolve(proxy)?, Via::Proxy { to }))
            }
            (None, Some(addr)) => Ok((client::resolve(addr)?, Via::Direct)),
            _ => Err("one of --proxy and --addr".into()),
        }
    }

    fn select(&self) -> Select {
        let now = unix_ms(SystemTime::now());
        let ago = |d: Duration| now.saturating_sub(d.as_millis() as u64);
        Select {
            since_ms: self.since.map(ago),
            until_ms: self.until.map(ago),
            names: self.names.clone(),
            methods: self.methods.clone(),
            allow_writes: self.allow_writes,
        }
    }

    fn replay(&self) -> Result<Report, String> {
        let (addr, via) = self.target()?;
        let settings = DiffSettings::default();
        let mut tally = Tally::default();
        let jobs = load(
            &self.capture,
            &self.select(),
            &via,
            &settings,
            &mut tally.report,
        )?;
        let due: Vec<u64> = jobs
            .iter()
            .map(|j| j.entry.sidetrack.started_unix_ms)
            .collect();
        let schedule = plan::schedule(&due, self.rate);
        let jobs: Arc<Vec<Job>> = Arc::new(
            jobs.into_iter()
                .zip(schedule)
                .map(|(j, due)| Job { due, ..j })
                .collect(),
        );

        let bar = if self.json || !std::io::stdout().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(jobs.len() as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} replayed, {msg} [{elapsed_precise}, {eta} left]",
            ) {
                bar.set_style(style);
            }
            bar
        };

        let next = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
        let start = Instant::now();
        let workers = usize::from(self.concurrency).min(jobs.len().max(1));
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (jobs, next, tx, settings) =
                (jobs.clone(), next.clone(), tx.clone(), settings.clone());
            let timeout = self.timeout;
            handles.push(thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { return };
                    let wait = (start + job.due).saturating_duration_since(Instant::now());
                    thread::sleep(wait);
                    let head = job.entry.request.method.eq_ignore_ascii_case("HEAD");
                    let outcome = match client::exchange(addr, &job.request, head, timeout) {
                        Ok(answer) => {
                            Outcome::Compared(report::differences(&settings, &job.entry, &answer))
                        }
                        Err(e) => Outcome::Failed(e),
                    };
                    if tx.send((i, outcome)).is_err() {
                        return;
                    }
                }
            }));
        }
        drop(tx);
        for (i, outcome) in rx {
            tally.add(&jobs[i].endpoint, outcome);
            let r = &tally.report;
            bar.set_message(format!("{} differing, {} failed", r.differing, r.errors));
            bar.inc(1);
        }
        for h in handles {
            let _ = h.join();
        }
        bar.finish_and_clear();
        Ok(tally.finish())
    }
}

/// The jobs to run from every segment in `dir`, in the order the requests
/// were captured; what is skipped is counted in `report`.
fn load(
    dir: &Path,
    select: &Select,
    via: &Via,
    settings: &DiffSettings,
    report: &mut Report,
) -> Result<Vec<Job>, String> {
    let segments = list_segments(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if segments.is_empty() {
        return Err(format!("{}: no capture segments", dir.display()));
    }
    let mut jobs = Vec::new();
    for (path, _, _) in segments {
        // A segment may go (the ring's bounds) while it is read.
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else {
                report.unreadable_lines += 1;
                break;
            };
            let entry = match serde_json::from_str::<Entry>(&line) {
                Ok(e) => e,
                Err(_) => {
                    // A line cut by a full disk or a crash.
                    report.unreadable_lines += 1;
                    continue;
                }
            };
            report.entries += 1;
            match select.decide(&entry) {
                Ok(()) => {}
                Err(Skip::Filtered) => {
                    report.filtered_out += 1;
                    continue;
                }
                Err(Skip::Write) => {
                    report.skipped_writes += 1;
                    continue;
                }
                Err(Skip::BodyNotKept) => {
                    report.skipped_body_not_kept += 1;
                    continue;
                }
                Err(Skip::NoAnswer) => {
                    report.skipped_no_answer += 1;
                    continue;
                }
            }
            let Some(body) = entry.request_body() else {
                report.skipped_body_not_kept += 1;
                continue;
            };
            let endpoint_header = settings.endpoint_header.as_deref().and_then(|h| {
                entry
                    .request
                    .headers
                    .iter()
                    .find(|x| x.name.eq_ignore_ascii_case(h))
                    .map(|x| x.value.as_bytes())
            });
            jobs.push(Job {
                endpoint: endpoint(
                    &entry.sidetrack.name,
                    entry.request.method.as_bytes(),
                    entry.target().as_bytes(),
                    endpoint_header,
                ),
                request: plan::request(&entry, via, &body),
                entry,
                due: Duration::ZERO,
            });
        }
    }
    jobs.sort_by_key(|j| j.entry.sidetrack.started_unix_ms);
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_with_or_without_a_unit() {
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert_eq!(parse_rate("2.5/s"), Ok(2.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
