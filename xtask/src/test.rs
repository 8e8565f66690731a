//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failure: setup (when something is missing), build-ebpf, rustfmt, clippy,
//! deploy/ rendered and validated against the Kubernetes API's schemas,
//! the container image (`cargo xtask image`: the node test runs the binary
//! from its root filesystem), every test of the workspace, the root ones
//! included, then a short run of
//! every fuzz target, which catches a fuzz crate that no longer builds and
//! a crash the seeds or a few seconds of fuzzing find, then a short soak
//! (75 s of `cargo xtask soak`: mixed and hostile load in eBPF mode,
//! nothing may grow, no request may fail).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{build_ebpf, cmd, deploy, fuzz, image, setup, soak};

/// How long each fuzz target runs in CI: enough to replay its seeds and
/// corpus and mutate for a while, small beside the tests.
pub const FUZZ_SECONDS_EACH: u64 = 5;

pub fn run() -> Result<()> {
    let started = Instant::now();
    setup::ensure()?;
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

    cmd::step(format!(
        "deploy/: every object valid for Kubernetes {}",
        deploy::KUBERNETES_VERSIONS.join(" and ")
    ));
    deploy::validate()?;

    // tests/tests/k8s_node.rs runs the image's binary with deploy/'s
    // arguments and settings.
    image::run()?;

    cmd::step("tests (the root ones included)");
    cmd::run(cmd::cargo().args(["test", "--workspace", "--locked"]))?;

    cmd::step(format!(
        "fuzz: every target for {FUZZ_SECONDS_EACH} s (the fuzz crate is not in the workspace)"
    ));
    let fuzz_manifest = fuzz::fuzz_dir().join("Cargo.toml");
    cmd::run(
        cmd::cargo()
            .args(["fmt", "--manifest-path"])
            .arg(&fuzz_manifest)
            .args(["--", "--check"]),
    )?;
    fuzz::run(
        fuzz::Budget::EachTarget(Duration::from_secs(FUZZ_SECONDS_EACH)),
        &[],
    )?;

    soak::run_short()?;

    cmd::step(format!(
        "all checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
