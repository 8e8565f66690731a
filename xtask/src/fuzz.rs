//! `cargo xtask fuzz`: every fuzz target of `proxy-userspace/fuzz` in turn,
//! each for its share of the time, and a table of what they did.
//!
//! The targets are what `cargo fuzz list` finds in the fuzz crate, so a new
//! one is run as soon as it has a `[[bin]]` there. They are built by
//! cargo-fuzz (installed into `<target>/tools` by `setup`) on the stable
//! toolchain with `--sanitizer none` and debug assertions: the code under
//! test is safe Rust, so what there is to catch is a panic, an overflow, a
//! failed assertion, a hang or a runaway allocation, all of which libFuzzer
//! reports without AddressSanitizer; ASan would need nightly flags
//! (`-Zsanitizer`) and halve the executions.
//!
//! Each target then runs as its own libFuzzer binary with:
//! - a working corpus in `<target>/fuzz/corpus/<name>` (kept between runs,
//!   never committed), and the committed seeds in
//!   `proxy-userspace/fuzz/seeds/<name>`, read only;
//! - the dictionary `proxy-userspace/fuzz/dicts/<name>.dict` when there is one;
//! - its output in `<target>/fuzz/logs/<name>.log`;
//! - crash, timeout and out-of-memory inputs in `<target>/fuzz/artifacts/<name>/`.
//!
//! A target that fails does not stop the others; the command fails at the
//! end, naming each failed target, its input and its log.

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{self, note, step},
    setup,
};

/// The triple cargo-fuzz builds for (its default: the host's).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";
/// An input that takes longer than this is a hang (libFuzzer's `-timeout`).
const UNIT_TIMEOUT_S: u32 = 10;
/// Memory a target may use before libFuzzer calls it out of memory.
const RSS_LIMIT_MB: u32 = 2048;

/// The fuzz crate, a workspace of its own.
pub fn fuzz_dir() -> PathBuf {
    crate::workspace_root().join("proxy-userspace/fuzz")
}

/// Corpora, logs and artefacts: `<target>/fuzz`.
pub fn work_dir() -> PathBuf {
    crate::target_dir().join("fuzz")
}

/// How long to fuzz.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    /// Shared evenly among the targets run.
    Total(Duration),
    /// Each target for this long.
    EachTarget(Duration),
}

/// What one target's run came to.
#[derive(Debug)]
pub struct Outcome {
    pub target: String,
    pub seconds: f64,
    pub executions: u64,
    pub execs_per_sec: u64,
    /// Inputs in libFuzzer's corpus at the end (seeds included).
    pub corpus: Option<u64>,
    /// Coverage points reached.
    pub coverage: Option<u64>,
    pub failure: Option<Failure>,
}

/// A target that crashed, hung or ran out of memory.
#[derive(Debug)]
pub struct Failure {
    /// libFuzzer's exit status.
    pub status: String,
    /// The input that did it, as libFuzzer saved it.
    pub artifact: Option<PathBuf>,
    pub log: PathBuf,
    /// The panic message or libFuzzer's error line.
    pub why: String,
}

/// Builds every target, runs those `only` names (all when empty) for the
/// budget, prints the table, and fails when a target did.
pub fn run(budget: Budget, only: &[String]) -> Result<()> {
    setup::install_cargo_fuzz()?;
    let all = targets()?;
    let chosen = choose(&all, only)?;
    build(&chosen, &all)?;
    let each = match budget {
        Budget::EachTarget(d) => d,
        Budget::Total(d) => d / chosen.len() as u32,
    };
    // libFuzzer counts whole seconds.
    let seconds = each.as_secs().max(1);
    let mut outcomes = Vec::new();
    for target in &chosen {
        step(format!("fuzz: {target} for {seconds} s"));
        let outcome = run_target(target, seconds)?;
        note(summary(&outcome));
        outcomes.push(outcome);
    }
    println!("{}", table(&outcomes));
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut msg = String::new();
    for o in failed {
        let f = o.failure.as_ref().expect("failed");
        let input = f
            .artifact
            .as_ref()
            .map_or("(no input saved)".into(), |p| p.display().to_string());
        let _ = write!(
            msg,
            "\n  {}: {} ({})\n    input: {input}\n    log:   {}",
            o.target,
            f.why,
            f.status,
            f.log.display()
        );
        if let Some(artifact) = &f.artifact {
            let _ = write!(
                msg,
                "\n    again: {} {}",
                binary(&o.target).display(),
                artifact.display()
            );
        }
    }
    bail!("fuzz targets failed:{msg}");
}

/// The fuzz crate's targets, by name.
pub fn targets() -> Result<Vec<String>> {
    let mut list = Command::new(setup::cargo_fuzz());
    list.args(["fuzz", "list", "--fuzz-dir"]).arg(fuzz_dir());
    let out = list
        .output()
        .with_context(|| format!("could not start `{}`", cmd::display(&list)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            cmd::display(&list),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        bail!("the fuzz crate {} has no targets", fuzz_dir().display());
    }
    Ok(names)
}

fn choose(all: &[String], only: &[String]) -> Result<Vec<String>> {
    if only.is_empty() {
        return Ok(all.to_vec());
    }
    for name in only {
        if !all.contains(name) {
            bail!("no fuzz target {name:?}; there are: {}", all.join(", "));
        }
    }
    Ok(all.iter().filter(|t| only.contains(t)).cloned().collect())
}

/// The fuzz crate's own target directory, given to cargo-fuzz explicitly so
/// that a `CARGO_TARGET_DIR` meant for the workspace does not move it.
fn build_dir() -> PathBuf {
    fuzz_dir().join("target")
}

fn binary(target: &str) -> PathBuf {
    build_dir().join(TRIPLE).join("release").join(target)
}

/// One cargo build for all the targets (or the one chosen).
fn build(chosen: &[String], all: &[String]) -> Result<()> {
    step(format!("fuzz: building {}", chosen.join(", ")));
    let mut build = Command::new(setup::cargo_fuzz());
    build
        .args(["fuzz", "build", "--sanitizer", "none", "--debug-assertions"])
        .arg("--fuzz-dir")
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(build_dir());
    if chosen.len() == 1 && all.len() > 1 {
        build.arg(&chosen[0]);
    }
    cmd::run(&mut build).context("building the fuzz targets failed")
}

fn run_target(target: &str, seconds: u64) -> Result<Outcome> {
    let work = work_dir();
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let logs = work.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = logs.join(format!("{target}.log"));
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

    let mut fuzz = Command::new(binary(target));
    // New inputs go to the first corpus directory: the working one.
    fuzz.arg(&corpus);
    let seeds = fuzz_dir().join("seeds").join(target);
    if seeds.is_dir() {
        fuzz.arg(&seeds);
    }
    let dict = fuzz_dir().join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        fuzz.arg(format!("-dict={}", dict.display()));
    }
    fuzz.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={UNIT_TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    note(format!("$ {}", cmd::display(&fuzz)));
    let started = Instant::now();
    let status = fuzz
        .status()
        .with_context(|| format!("could not start {}", binary(target).display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let stats = Stats::of(&text);
    let failure = (!status.success()).then(|| Failure {
        status: status.to_string(),
        artifact: stats.artifact.clone(),
        log: log.clone(),
        why: stats.why.clone().unwrap_or_else(|| "no message".into()),
    });
    Ok(Outcome {
        target: target.to_string(),
        seconds,
        executions: stats.executions,
        execs_per_sec: stats.execs_per_sec,
        corpus: stats.corpus,
        coverage: stats.coverage,
        failure,
    })
}

/// What a libFuzzer log says.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    executions: u64,
    execs_per_sec: u64,
    corpus: Option<u64>,
    coverage: Option<u64>,
    artifact: Option<PathBuf>,
    why: Option<String>,
}

impl Stats {
    fn of(log: &str) -> Stats {
        let mut s = Stats::default();
        let number = |v: &str| v.trim().parse::<u64>().ok();
        for line in log.lines() {
            if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
                s.executions = number(v).unwrap_or(s.executions);
            } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
                s.execs_per_sec = number(v).unwrap_or(s.execs_per_sec);
            } else if let Some(status) = line.strip_prefix('#') {
                // A status line: `#1234	NEW    cov: 56 ft: 78 corp: 9/10b ...`.
                let field = |name: &str| {
                    let rest = &line[line.find(name)? + name.len()..];
                    let digits: String = rest
                        .trim_start()
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    digits.parse::<u64>().ok()
                };
                if let Some(n) = status.split_whitespace().next().and_then(number) {
                    // Until the final stats (a crash may come before them).
                    s.executions = s.executions.max(n);
                }
                s.coverage = field(" cov:").or(s.coverage);
                s.corpus = field(" corp:").or(s.corpus);
            } else if let Some(i) = line.find("Test unit written to ") {
                let path = line[i + "Test unit written to ".len()..].trim();
                s.artifact = Some(PathBuf::from(path));
            } else if line.contains(" panicked at ") && s.why.is_none() {
                s.why = Some(line.trim().to_string());
            } else if let Some(i) = line.find("ERROR: libFuzzer: ") {
                let error = line[i + "ERROR: libFuzzer: ".len()..].trim();
                // The panic's own message says more than "deadly signal".
                if s.why.is_none() || !error.starts_with("deadly signal") {
                    s.why = Some(error.to_string());
                }
            }
        }
        // The panic message is the line after `panicked at`.
        if let Some(why) = &s.why
            && why.contains(" panicked at ")
            && let Some(next) = log
                .lines()
                .skip_while(|l| !l.contains(" panicked at "))
                .nth(1)
        {
            s.why = Some(format!("{why} {}", next.trim()));
        }
        s
    }
}

fn summary(o: &Outcome) -> String {
    let result = match &o.failure {
        None => "no crash".to_string(),
        Some(f) => format!("FAILED: {}", f.why),
    };
    format!(
        "{} executions in {:.0} s ({} a second): {result}",
        thousands(o.executions),
        o.seconds,
        thousands(o.execs_per_sec)
    )
}

/// Digits in groups of three: 100,000,000.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn table(outcomes: &[Outcome]) -> String {
    let opt = |v: Option<u64>| v.map_or("-".into(), thousands);
    let width = outcomes
        .iter()
        .map(|o| o.target.len())
        .chain(["target".len(), "total".len()])
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:<width$}  {:>8}  {:>14}  {:>9}  {:>8}  {:>8}  result\n",
        "target", "seconds", "executions", "exec/s", "corpus", "coverage"
    );
    for o in outcomes {
        let result = if o.failure.is_some() { "FAILED" } else { "ok" };
        let _ = writeln!(
            out,
            "{:<width$}  {:>8.0}  {:>14}  {:>9}  {:>8}  {:>8}  {result}",
            o.target,
            o.seconds,
            thousands(o.executions),
            thousands(o.execs_per_sec),
            opt(o.corpus),
            opt(o.coverage),
        );
    }
    let seconds: f64 = outcomes.iter().map(|o| o.seconds).sum();
    let executions: u64 = outcomes.iter().map(|o| o.executions).sum();
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let result = match failed {
        0 => "no crash".to_string(),
        n => format!("{n} failed"),
    };
    let _ = write!(
        out,
        "{:<width$}  {seconds:>8.0}  {:>14}  {:>9}  {:>8}  {:>8}  {result}",
        "total",
        thousands(executions),
        thousands((executions as f64 / seconds.max(1e-9)) as u64),
        "",
        "",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "\
INFO: Seed: 42
#2\tINITED cov: 100 ft: 120 corp: 5/300b exec/s: 0 rss: 30Mb
#4096\tpulse  cov: 140 ft: 180 corp: 9/1Kb lim: 40 exec/s: 2048 rss: 31Mb
#80000\tDONE   cov: 150 ft: 190 corp: 12/2Kb lim: 40 exec/s: 40000 rss: 31Mb
stat::number_of_executed_units: 80000
stat::average_exec_per_sec:     40000
stat::new_units_added:          7
";

    const CRASH: &str = "\
#1000\tNEW    cov: 10 ft: 12 corp: 3/30b lim: 4 exec/s: 0 rss: 30Mb
thread '<unnamed>' (9797) panicked at fuzz_targets/config.rs:115:9:
assertion `left == right` failed
==9797== ERROR: libFuzzer: deadly signal
artifact_prefix='/t/fuzz/artifacts/config/'; Test unit written to /t/fuzz/artifacts/config/crash-0ab8
Base64: IQ==
stat::number_of_executed_units: 1012
stat::average_exec_per_sec:     0
";

    #[test]
    fn reads_a_clean_log() {
        let s = Stats::of(CLEAN);
        assert_eq!(
            s,
            Stats {
                executions: 80000,
                execs_per_sec: 40000,
                corpus: Some(12),
                coverage: Some(150),
                artifact: None,
                why: None,
            }
        );
    }

    #[test]
    fn reads_a_crash() {
        let s = Stats::of(CRASH);
        assert_eq!(s.executions, 1012);
        assert_eq!(
            s.artifact,
            Some(PathBuf::from("/t/fuzz/artifacts/config/crash-0ab8"))
        );
        assert_eq!(
            s.why.as_deref(),
            Some(
                "thread '<unnamed>' (9797) panicked at fuzz_targets/config.rs:115:9: \
                 assertion `left == right` failed"
            )
        );
        // Without the final stats, the last status line counts.
        let cut = &CRASH[..CRASH.find("stat::").unwrap()];
        assert_eq!(Stats::of(cut).executions, 1000);
        // A hang has no panic: libFuzzer's own line says what happened.
        let hang = "==1== ERROR: libFuzzer: timeout after 10 seconds\n";
        assert_eq!(
            Stats::of(hang).why.as_deref(),
            Some("timeout after 10 seconds")
        );
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(100_000_000), "100,000,000");
    }

    #[test]
    fn only_names_known_targets() {
        let all = ["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(choose(&all, &[]).unwrap(), all);
        assert_eq!(choose(&all, &["c".into(), "a".into()]).unwrap(), ["a", "c"]);
        let err = choose(&all, &["d".into()]).unwrap_err().to_string();
        assert!(err.contains("\"d\"") && err.contains("a, b, c"), "{err}");
    }
}
