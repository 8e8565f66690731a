//! `cargo xtask setup`: install what building and testing Sidetrack need on
//! Debian 12, idempotently and only what is missing.
//!
//! * Debian packages: the second Rust toolchain that builds the eBPF crate
//!   (`rustc-web`, `cargo-web`, `rust-web-src`, whose std sources make
//!   `-Z build-std=core` work), LLVM 22 for bpf-linker, and the network tools
//!   the tests drive (`bpftool`, `iproute2`, `nftables`, `iptables`), and
//!   Chromium for the test of the admin page.
//! * bpf-linker 0.13.0 built against LLVM 22 into `<target>/tools`.
//! * cargo-fuzz into `<target>/tools`, for `cargo xtask fuzz` (and the short
//!   fuzz run of `cargo xtask test`); g++ for the libFuzzer it compiles.
//! * kubernetes-validate from PyPI into a venv under `<target>/tools`, which
//!   checks deploy/ against the Kubernetes API's schemas offline; umoci,
//!   skopeo and oci-image-tool, which `cargo xtask image` assembles and
//!   checks the container image with.
//! * grpcio from PyPI into the same venv: the HTTP/2 tests' gRPC servers
//!   and clients (tests/grpc/peer.py); nghttp2-client (nghttp, h2load).
//!
//! A second run checks and prints, and takes seconds.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, note, step};

/// Debian packages every build and test needs.
pub const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "bpftool",
    "iproute2",
    "nftables",
    "iptables",
    // The admin page's test drives it headless.
    "chromium",
    // The demo's client pod calls its services with it.
    "curl",
    // libfuzzer-sys compiles libFuzzer (C++) for the fuzz targets.
    "g++",
    // The venv kubernetes-validate and grpcio are installed into.
    "python3-venv",
    // HTTP/2 clients for the HTTP/2 tests and bench: nghttp, h2load.
    "nghttp2-client",
];

/// What `cargo xtask image` assembles, converts and validates the OCI
/// image with, with no daemon and nothing pulled.
pub const IMAGE_PACKAGES: &[&str] = &["umoci", "skopeo", "oci-image-tool"];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz builds the fuzz targets with libFuzzer's instrumentation on
/// stable Rust (with `--sanitizer none`; see `crate::fuzz`). Pinned so that
/// the flags it passes do not change under us.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Validates deploy/ offline: its wheel ships the API's JSON schemas for
/// Kubernetes 1.25 to 1.37. Pinned: the version decides the newest schema.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// The gRPC runtime the HTTP/2 tests' Python peers use. Pinned, so the
/// wheel (and what it sends on the wire) does not change under the tests.
pub const GRPCIO_VERSION: &str = "1.85.4";
/// Where Debian's llvm-22-dev puts `llvm-config`, which bpf-linker's build needs.
pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// `<target>/tools`: tools the project builds for itself.
pub fn tools_dir() -> PathBuf {
    crate::target_dir().join("tools")
}

pub fn bpf_linker() -> PathBuf {
    tools_dir().join("bin/bpf-linker")
}

pub fn cargo_fuzz() -> PathBuf {
    tools_dir().join("bin/cargo-fuzz")
}

/// The Python venv that holds kubernetes-validate, not the system's Python.
pub fn venv_dir() -> PathBuf {
    tools_dir().join("venv")
}

pub fn kubernetes_validate() -> PathBuf {
    venv_dir().join("bin/kubernetes-validate")
}

/// The venv's Python, which has grpcio.
pub fn venv_python() -> PathBuf {
    venv_dir().join("bin/python3")
}

/// Installs whatever is missing; prints what it finds either way.
pub fn run() -> Result<()> {
    step("setup: checking the machine");
    check_os()?;
    install_packages(&[PACKAGES, IMAGE_PACKAGES].concat())?;
    install_bpf_linker()?;
    install_cargo_fuzz()?;
    install_kubernetes_validate()?;
    install_grpcio()?;
    step("setup: everything is in place");
    Ok(())
}

/// True when nothing needs installing (so `test` can skip the printing).
/// Installs what is missing, or says that nothing is.
pub fn ensure() -> anyhow::Result<()> {
    if is_complete() {
        crate::cmd::step("setup: everything is in place");
        Ok(())
    } else {
        run()
    }
}

pub fn is_complete() -> bool {
    missing_packages(PACKAGES).is_empty()
        && missing_packages(IMAGE_PACKAGES).is_empty()
        && bpf_linker_ok()
        && cargo_fuzz_ok()
        && kubernetes_validate_ok()
        && grpcio_ok()
}

fn check_os() -> Result<()> {
    let release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |name: &str| {
        release
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let (id, like, version) = (field("ID"), field("ID_LIKE"), field("VERSION_ID"));
    if id != "debian" && !like.split_whitespace().any(|w| w == "debian") {
        bail!(
            "this is not Debian (ID={id:?}): `cargo xtask setup` knows only apt. Install by hand \
             the equivalents of {} and bpf-linker {BPF_LINKER_VERSION} (`cargo install bpf-linker \
             --version {BPF_LINKER_VERSION} --locked --no-default-features --features llvm-22 --root {}`)",
            PACKAGES.join(", "),
            tools_dir().display()
        );
    }
    note(format!("OS: {id} {version}"));
    if id == "debian" && version != "12" {
        note("warning: only Debian 12 is tested; carrying on");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Packages of `wanted` that dpkg does not report as installed.
pub fn missing_packages<'a>(wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|pkg| {
            let status =
                cmd::output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", pkg]));
            status.as_deref() != Some("installed")
        })
        .collect()
}

/// Installs the Debian packages of `wanted` that are missing.
pub fn install_packages(wanted: &[&str]) -> Result<()> {
    let missing = missing_packages(wanted);
    if missing.is_empty() {
        note(format!(
            "Debian packages: all present ({})",
            wanted.join(", ")
        ));
        return Ok(());
    }
    step(format!(
        "setup: installing Debian packages: {}",
        missing.join(" ")
    ));
    if !is_root() {
        bail!(
            "installing {} needs root: run `sudo -E cargo xtask setup` (or as root), \
             or install them yourself with apt-get",
            missing.join(" ")
        );
    }
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update failed: is Debian's package registry reachable from this machine?")?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| {
        format!(
            "apt-get could not install {}: check that Debian's registry is reachable and that \
             the packages exist for this release (`apt-cache policy {}`)",
            missing.join(" "),
            missing[0]
        )
    })?;
    let still = missing_packages(wanted);
    if !still.is_empty() {
        bail!(
            "apt-get finished but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn bpf_linker_ok() -> bool {
    cmd::output(Command::new(bpf_linker()).arg("--version"))
        .is_some_and(|v| v.split_whitespace().any(|w| w == BPF_LINKER_VERSION))
}

fn install_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        note(format!(
            "bpf-linker {BPF_LINKER_VERSION}: present at {}",
            bpf_linker().display()
        ));
        return Ok(());
    }
    step(format!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 90 s)"
    ));
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    cmd::run(
        cmd::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(tools_dir())
            .env("PATH", path),
    )
    .context("building bpf-linker failed: is crates.io reachable, and is llvm-22-dev installed?")?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker was built but {} does not answer --version",
            bpf_linker().display()
        );
    }
    Ok(())
}

fn cargo_fuzz_ok() -> bool {
    cmd::output(Command::new(cargo_fuzz()).arg("--version"))
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION))
}

/// Builds cargo-fuzz into `<target>/tools` unless it is there (about 30 s).
pub fn install_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_ok() {
        note(format!(
            "cargo-fuzz {CARGO_FUZZ_VERSION}: present at {}",
            cargo_fuzz().display()
        ));
        return Ok(());
    }
    step(format!(
        "setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (about 30 s)"
    ));
    cmd::run(
        cmd::cargo()
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
                "--root",
            ])
            .arg(tools_dir()),
    )
    .context("building cargo-fuzz failed: is crates.io reachable?")?;
    if !cargo_fuzz_ok() {
        bail!(
            "cargo-fuzz was built but {} does not answer --version",
            cargo_fuzz().display()
        );
    }
    Ok(())
}

fn kubernetes_validate_ok() -> bool {
    cmd::output(Command::new(kubernetes_validate()).arg("--version"))
        .is_some_and(|v| v.trim() == KUBERNETES_VALIDATE_VERSION)
}

/// Installs kubernetes-validate from PyPI into `<target>/tools/venv` unless
/// it is there (about 10 s). Debian's own Python makes the venv: its
/// python3-venv is what `PACKAGES` installs, whatever else is on PATH.
pub fn install_kubernetes_validate() -> Result<()> {
    if kubernetes_validate_ok() {
        note(format!(
            "kubernetes-validate {KUBERNETES_VALIDATE_VERSION}: present at {}",
            kubernetes_validate().display()
        ));
        return Ok(());
    }
    step(format!(
        "setup: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} into {}",
        venv_dir().display()
    ));
    let python = venv_dir().join("bin/python3");
    if !python.is_file() {
        cmd::run(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(venv_dir()),
        )
        .context("making the venv failed: is python3-venv installed?")?;
    }
    pip_install(&format!(
        "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
    ))?;
    if !kubernetes_validate_ok() {
        bail!(
            "kubernetes-validate was installed but {} does not answer --version with {KUBERNETES_VALIDATE_VERSION}",
            kubernetes_validate().display()
        );
    }
    Ok(())
}

fn grpcio_ok() -> bool {
    cmd::output(Command::new(venv_python()).args(["-c", "import grpc; print(grpc.__version__)"]))
        .is_some_and(|v| v.trim() == GRPCIO_VERSION)
}

/// Installs grpcio from PyPI into the venv unless it is there (a wheel:
/// seconds). Runs after [`install_kubernetes_validate`], which makes the venv.
pub fn install_grpcio() -> Result<()> {
    if grpcio_ok() {
        note(format!(
            "grpcio {GRPCIO_VERSION}: present in {}",
            venv_dir().display()
        ));
        return Ok(());
    }
    step(format!(
        "setup: installing grpcio {GRPCIO_VERSION} into {}",
        venv_dir().display()
    ));
    pip_install(&format!("grpcio=={GRPCIO_VERSION}"))?;
    if !grpcio_ok() {
        bail!(
            "grpcio was installed but {} does not import it at {GRPCIO_VERSION}",
            venv_python().display()
        );
    }
    Ok(())
}

/// `pip install SPEC` into the venv.
fn pip_install(spec: &str) -> Result<()> {
    cmd::run(
        Command::new(venv_python())
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(spec),
    )
    .with_context(|| format!("pip could not install {spec}: is PyPI reachable?"))
}
