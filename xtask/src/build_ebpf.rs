//! `cargo xtask build-ebpf`: build `proxy-ebpf` for `bpfel-unknown-none` and
//! put the object where `proxy-userspace`'s build script embeds it.
//!
//! The eBPF crate needs `-Z build-std=core`, which rustup's toolchains here
//! cannot do (no rust-src), so it is built by Debian's rustc-web toolchain
//! (sysroot /usr, std sources from rust-web-src) with bpf-linker. Cargo must
//! run from inside `proxy-ebpf/` so that its `.cargo/config.toml` (target,
//! build-std, linker) applies.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{cmd, setup};

/// Where userspace expects the object (see proxy-userspace/build.rs).
pub fn object_path() -> PathBuf {
    crate::workspace_root().join("target/bpf/sidetrack.bpf.o")
}

pub fn run() -> Result<()> {
    cmd::step("build-ebpf: building proxy-ebpf for bpfel-unknown-none");
    if !setup::missing_packages(&["rustc-web", "cargo-web", "rust-web-src"]).is_empty()
        || !setup::bpf_linker().is_file()
    {
        bail!("the eBPF toolchain is not installed: run `cargo xtask setup` first");
    }
    let root = crate::workspace_root();
    let target = root.join("target/bpf");
    let path = format!(
        "{}:{}:/usr/bin:{}",
        setup::tools_dir().join("bin").display(),
        setup::LLVM_BIN,
        std::env::var("PATH").unwrap_or_default()
    );
    let mut build = Command::new("/usr/bin/cargo");
    build
        .args(["build", "--release", "--locked"])
        .current_dir(root.join("proxy-ebpf"))
        .env("PATH", path)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &target);
    // What rustup and the outer cargo put in our environment would pick the
    // wrong compiler or flags for the BPF target.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        build.env_remove(var);
    }
    cmd::run(&mut build)?;

    let built = target.join("bpfel-unknown-none/release/sidetrack");
    let object = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let dest = object_path();
    // Copy only on change, so an unchanged object does not rebuild userspace.
    if fs::read(&dest).ok().as_deref() != Some(&object[..]) {
        fs::write(&dest, &object).with_context(|| format!("writing {}", dest.display()))?;
        cmd::note(format!("wrote {} ({} bytes)", dest.display(), object.len()));
    } else {
        cmd::note(format!("{} is up to date", dest.display()));
    }
    Ok(())
}
