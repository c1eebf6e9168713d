//! The `stellantis-sync` binary: parse the command line, hand it to the library, turn the outcome
//! into an exit code. Everything else lives in the library (see `ARCHITECTURE.md`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = stellantis_sync::cli::Cli::parse();
    ExitCode::from(stellantis_sync::run(cli))
}
