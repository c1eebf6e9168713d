//! The `stellantis-sync` binary: parse the command line, hand it to the library, turn the outcome
//! into an exit code. Everything else lives in the library (see `ARCHITECTURE.md`).

use std::process::ExitCode;

use clap::Parser;

/// Exit code when stdout is a pipe whose reader went away (`status | head`): the shell's code for
/// a process ended by SIGPIPE (128 + 13), which Rust ignores so that the write fails instead.
const BROKEN_PIPE: i32 = 141;

fn main() -> ExitCode {
    // Printing to a closed pipe panics in Rust; the reader asked for less output, which is not a
    // crash: end quietly, as a process killed by SIGPIPE would.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE);
        }
        default_hook(info);
    }));
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
