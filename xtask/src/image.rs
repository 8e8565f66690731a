//! `cargo xtask image`: the container image `sidetrack:dev`, assembled
//! offline, with no daemon and no base image.
//!
//! The image is `FROM scratch`: one static binary, `/sidetrack`, its
//! entrypoint (the proxy resolves no names and loads no library, so it needs
//! no other file). umoci assembles it because it edits an OCI layout
//! directly: no storage driver, no container runtime (buildah's `RUN`
//! needs one, and crun fails on these machines' hybrid cgroup layout), and
//! no containers configuration. oci-image-tool validates the result, and
//! skopeo writes the two tarballs nodes take:
//!
//! * `target/image/sidetrack-oci.tar`, an OCI archive (`ctr images import`);
//! * `target/image/sidetrack-docker.tar`, a docker-archive tagged
//!   `sidetrack:dev` (`kind load image-archive`, `ctr -n k8s.io images
//!   import`, `docker load`).
//!
//! The OCI layout itself stays in `target/image/oci` (tag `dev`), for
//! `umoci unpack` or `skopeo copy` to a registry.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{build_ebpf, cmd, setup};

/// The name the DaemonSet in deploy/ runs.
pub const IMAGE_NAME: &str = "sidetrack:dev";
/// The tag of the image in the OCI layout.
const LAYOUT_TAG: &str = "dev";
/// Named explicitly so the static build lands in `target/<triple>/release`,
/// apart from the ordinary builds, whose artifacts its RUSTFLAGS would
/// otherwise invalidate.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Static (a static-pie with glibc; no musl target needs installing), and
/// without the release profile's debug info, which would triple the image;
/// the symbol table stays for backtraces.
const RUSTFLAGS: &str = "-C target-feature=+crt-static -C strip=debuginfo";

pub fn image_dir() -> PathBuf {
    crate::target_dir().join("image")
}

pub fn oci_archive() -> PathBuf {
    image_dir().join("sidetrack-oci.tar")
}

pub fn docker_archive() -> PathBuf {
    image_dir().join("sidetrack-docker.tar")
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    setup::ensure()?;
    build_ebpf::run()?;
    let binary = build_static()?;
    assemble(&binary)?;
    cmd::step(format!(
        "image {IMAGE_NAME} in {:.0} s: {} and {}",
        started.elapsed().as_secs_f64(),
        oci_archive().display(),
        docker_archive().display()
    ));
    cmd::note(format!(
        "kind:  kind load image-archive {}",
        docker_archive().display()
    ));
    cmd::note(format!(
        "k3s or containerd (on each node):  ctr -n k8s.io images import {}",
        docker_archive().display()
    ));
    Ok(())
}

/// Builds the static release binary and checks that it is static.
fn build_static() -> Result<PathBuf> {
    cmd::step(format!("image: a static release binary for {TARGET}"));
    cmd::run(
        cmd::cargo()
            .args(["build", "--release", "--locked", "--target", TARGET])
            .args(["-p", "sidetrack"])
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", RUSTFLAGS),
    )?;
    let binary = crate::target_dir().join(TARGET).join("release/sidetrack");
    let elf = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    if has_interpreter(&elf)? {
        bail!(
            "{} names a dynamic loader: it would not run in an image with nothing else in it",
            binary.display()
        );
    }
    cmd::note(format!(
        "{}: static, {:.1} MiB",
        binary.display(),
        elf.len() as f64 / (1 << 20) as f64
    ));
    Ok(binary)
}

/// Whether an x86-64 ELF executable has a `PT_INTERP` program header, the
/// dynamic loader that would load its shared libraries. A static (or
/// static-pie) binary has none.
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let bytes = |at: usize, n: usize| elf.get(at..at + n).context("a truncated ELF file");
    if bytes(0, 6)? != b"\x7fELF\x02\x01" {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |at| bytes(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let phoff = u64::from_le_bytes(bytes(0x20, 8)?.try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..phnum {
        let p_type = bytes(phoff + i * phentsize, 4)?;
        if u32::from_le_bytes(p_type.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The OCI layout from scratch, validated, then the two archives.
fn assemble(binary: &Path) -> Result<()> {
    cmd::step("image: assembling it from scratch (umoci)");
    let dir = image_dir();
    let layout = dir.join("oci");
    if layout.exists() {
        fs::remove_dir_all(&layout)
            .with_context(|| format!("removing the old {}", layout.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let image = format!("{}:{LAYOUT_TAG}", layout.display());
    let revision = cmd::output(
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(crate::workspace_root()),
    )
    .map_or_else(|| "unknown".into(), |s| s.trim().to_string());

    cmd::run(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    )?;
    cmd::run(Command::new("umoci").args(["new", "--image", &image]))?;
    // --rootless: the file goes in owned by root whoever builds it.
    cmd::run(
        Command::new("umoci")
            .args(["insert", "--rootless", "--image", &image])
            .args(["--history.created_by", "cargo xtask image"])
            .arg(binary)
            .arg("/sidetrack"),
    )?;
    cmd::run(
        Command::new("umoci")
            .args(["config", "--image", &image])
            .args(["--config.entrypoint", "/sidetrack"])
            .args(["--config.cmd", "--help"])
            .args(["--config.user", "0:0", "--config.workingdir", "/"])
            .args(["--config.label", "org.opencontainers.image.title=sidetrack"])
            .arg("--config.label")
            .arg(format!("org.opencontainers.image.revision={revision}"))
            .args(["--history.created_by", "cargo xtask image"]),
    )?;
    cmd::step("image: validating and writing the archives (oci-image-tool, skopeo)");
    cmd::run(
        Command::new("oci-image-tool")
            .args(["validate", "--type", "image", "--ref"])
            .arg(format!("name={LAYOUT_TAG}"))
            .arg(&layout),
    )?;
    for (archive, kind) in [
        (oci_archive(), "oci-archive"),
        (docker_archive(), "docker-archive"),
    ] {
        if archive.exists() {
            fs::remove_file(&archive)
                .with_context(|| format!("removing the old {}", archive.display()))?;
        }
        // A local copy with no signatures: no policy to consult.
        cmd::run(
            Command::new("skopeo")
                .args(["--insecure-policy", "copy", "--quiet"])
                .arg(format!("oci:{image}"))
                .arg(format!("{kind}:{}:{IMAGE_NAME}", archive.display())),
        )?;
    }
    // The archive as written, unpacked: this oci-image-tool's own tar reader
    // finds nothing in any archive ("unable to walk: end of walk").
    let unpacked = dir.join("oci-archive-check");
    if unpacked.exists() {
        fs::remove_dir_all(&unpacked)?;
    }
    fs::create_dir_all(&unpacked)?;
    cmd::run(
        Command::new("tar")
            .arg("-xf")
            .arg(oci_archive())
            .arg("-C")
            .arg(&unpacked),
    )?;
    cmd::run(
        Command::new("oci-image-tool")
            .args(["validate", "--type", "image", "--ref"])
            .arg(format!("name={IMAGE_NAME}"))
            .arg(&unpacked),
    )?;
    fs::remove_dir_all(&unpacked)?;
    check_docker_archive(&docker_archive())
}

/// The docker-archive names the image as nodes will look for it.
fn check_docker_archive(archive: &Path) -> Result<()> {
    let manifest = cmd::output(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("manifest.json"),
    )
    .with_context(|| format!("{} has no manifest.json", archive.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&manifest)
        .with_context(|| format!("{}: manifest.json", archive.display()))?;
    let tags = &manifest[0]["RepoTags"];
    let named = tags.as_array().is_some_and(|tags| {
        tags.iter().any(|t| {
            t.as_str()
                .is_some_and(|t| t == IMAGE_NAME || t == format!("docker.io/library/{IMAGE_NAME}"))
        })
    });
    if !named {
        bail!("{}: tagged {tags}, not {IMAGE_NAME}", archive.display());
    }
    cmd::note(format!("{}: tagged {tags}", archive.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit ELF header with the given program header types.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56 * types.len()];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            e[64 + 56 * i..][..4].copy_from_slice(&t.to_le_bytes());
        }
        e
    }

    #[test]
    fn a_binary_with_a_loader_is_not_static() {
        // PT_PHDR, PT_INTERP, PT_LOAD: a dynamically linked executable.
        assert!(has_interpreter(&elf(&[6, 3, 1])).unwrap());
        // PT_LOAD, PT_DYNAMIC, PT_GNU_STACK: a static-pie.
        assert!(!has_interpreter(&elf(&[1, 2, 0x6474_e551])).unwrap());
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        let mut cut = elf(&[1, 3]);
        cut.truncate(64 + 56 + 2);
        assert!(has_interpreter(&cut).is_err(), "truncated headers");
    }

    #[test]
    fn the_running_test_binary_is_dynamic() {
        // Test binaries are built without crt-static: the check must see that.
        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&exe).unwrap());
    }
}
