//! The `sidetrack` command line (clap): global flags and the subcommands.
//!
//! Each subcommand lives in its own file and returns its exit status, so that
//! the documented contracts (exit 2 on a dtab error, JSON on stdout) are kept
//! in one place per command.

pub mod admin_http;
pub mod diff;
pub mod dtab;
pub mod replay;
pub mod run;
pub mod stage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "sidetrack",
    version,
    about = "Node-level transparent HTTP proxy with dtab routing and eBPF interception",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "SIDETRACK_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info", env = "SIDETRACK_LOG")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run(run::RunArgs),
    /// Work with delegation tables offline: show, eval, resolve, delegate.
    #[command(subcommand)]
    Dtab(dtab::DtabCommand),
    /// Build (and sign) the override that stages a version, with a curl
    /// line that sends it.
    Stage(stage::StageArgs),
    /// Show a running proxy's response diff report (candidate vs primary,
    /// noise cancelled); exit 1 when a field is reported.
    Diff(diff::DiffArgs),
    /// Send captured requests again (to another version, through a proxy
    /// or straight to an address) and report per endpoint how the answers
    /// differ from the recorded ones; exit 1 when one does.
    Replay(replay::ReplayArgs),
}

/// The `sidetrack` binary: parse the command line, set up logging, run.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.log_format, &cli.log_level);
    cli.run()
}

impl Cli {
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Dtab(cmd) => cmd.run(),
            Command::Run(args) => args.run(),
            Command::Stage(args) => args.run(),
            Command::Diff(args) => args.run(),
            Command::Replay(args) => args.run(),
        }
    }
}

/// The width of a text column in a report: its longest entry, within
/// `min..=max` characters.
pub(crate) fn column_width<'a>(
    texts: impl Iterator<Item = &'a str>,
    min: usize,
    max: usize,
) -> usize {
    texts
        .map(|t| t.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(min, max)
}
