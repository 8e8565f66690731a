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
    /// Everything CI checks: setup, build-ebpf, fmt, clippy, deploy/
    /// validated, every test.
    Test,
    /// The container image sidetrack:dev, offline and from scratch (a static
    /// binary): target/image/sidetrack-oci.tar and sidetrack-docker.tar.
    Image,
    /// The ad-hoc staging demo on a netns test bed, the proxy in eBPF mode.
    Demo {
        /// Keep the test bed running until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Benchmark every scenario on the netns test bed (issue 6): latency,
    /// throughput, CPU and memory against direct, nginx and haproxy.
    Bench {
        /// A short run (one round, shorter phases, no dtab bench): under 2 minutes.
        #[arg(long)]
        quick: bool,
        /// Only these scenarios (comma-separated names, e.g.
        /// `direct,sidetrack-ebpf`): for looking at one path; the targets
        /// need all six.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Also run Sidetrack's explicit and eBPF modes from this git
        /// revision (`baseline-explicit`, `baseline-ebpf`, built in
        /// target/baseline/<sha>) and compare the current ones with them.
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
        /// Also measure the c=1 phases with the client pod, the proxy and the
        /// server pod each in a CPU cgroup of its own, as under Kubernetes.
        #[arg(long)]
        pod_cgroups: bool,
    },
    /// Run every fuzz target of proxy-userspace/fuzz in turn and report
    /// the executions of each (docs/fuzz.md).
    Fuzz {
        /// Minutes in all, shared evenly among the targets (fractions allowed).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Only these targets (comma-separated names, e.g. `chunked,framing`).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// A long mixed load on the test bed in eBPF mode, hostile clients and
    /// failing backends included; fails if the proxy's memory, descriptors,
    /// eBPF map entries or kernel socket memory trend upward after the
    /// warm-up, or if any request gets the wrong answer (issue 18).
    Soak {
        /// How long to run (the first 20% is warm-up).
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
    },
    /// Run one of the demo's apps (used inside the demo's pods).
    #[command(hide = true)]
    App {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn fuzz_minutes(minutes: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(minutes * 60.0)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--minutes {minutes}: give a positive number"))
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Setup => xtask::setup::run(),
        Cmd::BuildEbpf => xtask::build_ebpf::run(),
        Cmd::Test => xtask::test::run(),
        Cmd::Image => xtask::image::run(),
        Cmd::Demo { keep } => xtask::demo::run(keep),
        Cmd::Bench {
            quick,
            only,
            baseline,
            pod_cgroups,
        } => xtask::bench::run(quick, &only, baseline.as_deref(), pod_cgroups),
        Cmd::Fuzz { minutes, only } => fuzz_minutes(minutes)
            .and_then(|total| xtask::fuzz::run(xtask::fuzz::Budget::Total(total), &only)),
        Cmd::Soak { minutes } => xtask::soak::run(minutes),
        Cmd::App { args } => xtask::apps::run(&args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\x1b[1;31merror:\x1b[0m {e:#}");
            ExitCode::FAILURE
        }
    }
}
