//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failure: setup (when something is missing), build-ebpf, rustfmt, clippy,
//! then every test of the workspace, the root ones included.

use std::time::Instant;

use anyhow::Result;

use crate::{build_ebpf, cmd, setup};

pub fn run() -> Result<()> {
    let started = Instant::now();
    if setup::is_complete() {
        cmd::step("setup: everything is in place");
    } else {
        setup::run()?;
    }
    build_ebpf::run()?;

    cmd::step("rustfmt");
    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;

    cmd::step("clippy");
    cmd::run(cmd::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;

    cmd::step("tests (the root ones included)");
    cmd::run(cmd::cargo().args(["test", "--workspace", "--locked"]))?;

    cmd::step(format!(
        "all checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
