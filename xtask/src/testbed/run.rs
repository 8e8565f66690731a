//! Running the bed's commands (`ip`, mostly): each one is printed only when
//! verbose, and a failure names the command and what it wrote to stderr.

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::cmd::display;

/// 0: not decided yet (read `SIDETRACK_BED_VERBOSE` on first use), 1: quiet, 2: verbose.
static VERBOSE: AtomicU8 = AtomicU8::new(0);

/// Prints every command the bed runs (on stderr) when `on`. The default comes
/// from the environment variable `SIDETRACK_BED_VERBOSE` (set and not `0`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

pub(crate) fn verbose() -> bool {
    match VERBOSE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("SIDETRACK_BED_VERBOSE").is_some_and(|v| v != "0");
            set_verbose(on);
            on
        }
        v => v == 2,
    }
}

/// Prints `msg` when verbose.
pub(crate) fn log(msg: impl std::fmt::Display) {
    if verbose() {
        eprintln!("    [testbed] {msg}");
    }
}

/// Runs `cmd` to completion and returns its stdout; fails unless it exits 0.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    log(format_args!("$ {shown}"));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS...`.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}
