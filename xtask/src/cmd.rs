//! Running commands: each is printed before it runs, and a failure names the
//! command and its exit status.

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// Prints a step heading.
pub fn step(msg: impl std::fmt::Display) {
    eprintln!("\x1b[1m==> {msg}\x1b[0m");
}

/// Prints a note under a step.
pub fn note(msg: impl std::fmt::Display) {
    eprintln!("    {msg}");
}

/// Shows a command the way a person would type it.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    note(format!("$ {shown}"));
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    note(format!("done in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout when it exits 0.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cargo that runs xtask (rustup's, as chosen by the caller).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
