//! Log output through `tracing`: readable text on a terminal; under journald (`JOURNAL_STREAM`
//! set) no colours and no timestamps (journald adds its own) and each line starts with its
//! syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald reads
//! (`SyslogLevelPrefix=`, on by default) so `journalctl -p warning` shows the warnings, such as a
//! refresh-token chain about to end; JSON for log shippers. Filtering follows `RUST_LOG`
//! (default `info`).
//!
//! No secret reaches a log line: secrets are `secrecy` types whose `Debug` is redacted, and no
//! function that handles one is `#[instrument]`ed.

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

/// Installs the global subscriber (once; later calls do nothing): `RUST_LOG` if set, else the
/// `default` filter (`info`; the demo: `warn`).
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Auto if journald => builder
            .with_ansi(false)
            .event_format(journal_format())
            .try_init(),
        LogFormat::Auto | LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
    };
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)).
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Lines under journald: the priority prefix, then the text format without colours, time or
/// target.
fn journal_format() -> JournalPriority<
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>,
> {
    JournalPriority(
        tracing_subscriber::fmt::format()
            .with_ansi(false)
            .without_time()
            .with_target(false),
    )
}

/// Writes an event's `<N>` priority prefix before the inner format's line.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journald_lines_carry_their_priority() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(journal_format())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("broken");
            tracing::warn!(account = "a", "the refresh token chain ends soon");
            tracing::info!("fine");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("<3>") && lines[0].contains("broken"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("<4>") && lines[1].contains("account=\"a\""),
            "{text}"
        );
        assert!(lines[2].starts_with("<6>"), "{text}");
        assert_eq!(syslog_priority(Level::TRACE), 7);
    }
}
