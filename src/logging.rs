//! Log output through `tracing`: readable text on a terminal; under journald (`JOURNAL_STREAM`
//! set) no colours and no timestamps (journald adds its own); JSON for log shippers. Filtering
//! follows `RUST_LOG` (default `info`).
//!
//! No secret reaches a log line: secrets are `secrecy` types whose `Debug` is redacted, and no
//! function that handles one is `#[instrument]`ed.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber (once; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Auto if journald => builder
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .try_init(),
        LogFormat::Auto | LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
    };
}
