//! Sidetrack's developer commands (`cargo xtask ...`), as a library so that
//! the integration tests can share what the commands set up.
//!
//! * `setup`: install, idempotently, what building and testing need on Debian 12.
//! * `build_ebpf`: build `proxy-ebpf` with Debian's toolchain for the BPF target.
//! * `test`: everything CI checks.
//! * `image`: `cargo xtask image`, the container image, offline.
//! * `deploy`: deploy/ rendered and validated against the Kubernetes schemas.
//! * `cmd`: running commands with each step printed.
//! * `testbed`: a node with pods (network namespaces, veths, cgroups).
//! * `staging` and `apps`: the ad-hoc staging scenario of the demo and the
//!   interception tests, and the small servers it runs.
//! * `bench`: `cargo xtask bench`, Sidetrack against the limit and its peers.
//! * `fuzz`: `cargo xtask fuzz`, every fuzz target in turn.
//! * `soak`: `cargo xtask soak`, a long mixed load that fails on growth.

pub mod apps;
pub mod bench;
pub mod build_ebpf;
pub mod cmd;
pub mod demo;
pub mod deploy;
pub mod fuzz;
pub mod image;
pub mod setup;
pub mod soak;
pub mod staging;
pub mod test;
pub mod testbed;

use std::path::PathBuf;

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// The shared target directory: `<root>/target`, or `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}
