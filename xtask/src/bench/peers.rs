//! Peers built from source for the bench, outside Sidetrack's workspace:
//! Pingora (`xtask/peers/pingora`, scenario `pingora`). Its crate is a
//! workspace of its own so that the normal build and `cargo xtask test`
//! never compile Pingora; the bench builds it only when `pingora` runs,
//! into a target directory of its own (`<target>/pingora-peer`), so that
//! its build holds no lock on the shared one.

use std::path::PathBuf;

use anyhow::Result;

use crate::{cmd, setup};

/// Builds `pingora-peer` (release, locked) and returns the binary.
pub fn build_pingora() -> Result<PathBuf> {
    // libz-ng-sys (flate2's zlib-ng, which pingora-core asks for) builds
    // with cmake.
    setup::install_packages(&["cmake"])?;
    let manifest = crate::workspace_root().join("xtask/peers/pingora/Cargo.toml");
    let target = crate::target_dir().join("pingora-peer");
    cmd::step("building pingora-peer (release; the first time takes minutes)");
    cmd::run(
        cmd::cargo()
            .args(["build", "--release", "--locked", "--manifest-path"])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target),
    )?;
    Ok(target.join("release/pingora-peer"))
}
