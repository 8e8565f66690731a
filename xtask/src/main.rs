use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sidetrack's developer commands.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (Debian 12; idempotent).
    Setup,
    /// Build the eBPF programs with Debian's toolchain for bpfel-unknown-none.
    BuildEbpf,
    /// Everything CI checks: setup, build-ebpf, fmt, clippy, every test.
    Test,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Setup => xtask::setup::run(),
        Cmd::BuildEbpf => xtask::build_ebpf::run(),
        Cmd::Test => xtask::test::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\x1b[1;31merror:\x1b[0m {e:#}");
            ExitCode::FAILURE
        }
    }
}
