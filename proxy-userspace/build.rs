//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is built by a different toolchain (Debian's rustc-web, for
//! bpfel-unknown-none), so cargo cannot build it as a dependency; xtask puts
//! it at a fixed place and this script points `include_bytes!` at it.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=SIDETRACK_EBPF_OBJECT");
    let object = match env::var_os("SIDETRACK_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/bpf/sidetrack.bpf.o")
        }
    };
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.is_file() {
        println!(
            "cargo::error=the eBPF object {} is missing: run `cargo xtask build-ebpf` \
             (or `cargo xtask setup` first on a new machine), then build again",
            object.display()
        );
        return;
    }
    let object = object
        .canonicalize()
        .expect("canonical path of the eBPF object");
    println!(
        "cargo::rustc-env=SIDETRACK_EBPF_OBJECT={}",
        object.display()
    );
}
