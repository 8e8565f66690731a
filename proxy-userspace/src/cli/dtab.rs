//! `sidetrack dtab ...` (being written; see issue 3).

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DtabCommand {
    /// Print a dtab in canonical form.
    Show { dtab: String },
}

impl DtabCommand {
    pub fn run(self) -> ExitCode {
        match self {
            DtabCommand::Show { dtab } => {
                eprintln!("dtab show is not built yet: {dtab}");
                ExitCode::from(2)
            }
        }
    }
}
