//! The `stellantis-sync` binary: parse the command line, hand it to the library, turn the outcome
//! into an exit code. Everything else lives in the library (see `ARCHITECTURE.md`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match stellantis_sync::cli::Cli::try_parse() {
        Ok(cli) => ExitCode::from(stellantis_sync::run(cli)),
        Err(e) => {
            // `--help` and `--version` are not errors; a bad command line is a usage error (64).
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(stellantis_sync::exit::USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
