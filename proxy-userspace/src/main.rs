use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sidetrack::cli::Cli::parse();
    sidetrack::logging::init(cli.log_format, &cli.log_level);
    cli.run()
}
