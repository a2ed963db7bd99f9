//! Logging through `tracing-subscriber`: `RUST_LOG` when set, else the
//! configured level; human-readable text or one JSON object per line.
//! Text is coloured only on a terminal: log files and collectors get plain
//! lines (and every request's span is formatted without escape codes).
//!
//! Lines are written to stdout by a thread of their own
//! (`tracing-appender`'s non-blocking writer), so a request's access line
//! costs its worker the formatting, not a write to a pipe or a file that
//! may be slow. The buffer holds [`BUFFERED_LINES`]; lines beyond it are
//! dropped rather than block a request, and counted
//! (`gantry_log_lines_dropped_total`, [`dropped_lines`]).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines the writer thread may be behind by before new ones are dropped.
pub const BUFFERED_LINES: usize = 65_536;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines dropped since start because the writer was [`BUFFERED_LINES`]
/// behind.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Installs the global subscriber; a second call does nothing. With a
/// `tracer` ([`crate::telemetry`]) spans are exported as traces too. Keep
/// the guard until the process ends: dropping it writes out what is
/// buffered.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(
    format: LogFormat,
    level: &str,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> WorkerGuard {
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .thread_name("log-writer")
        .finish(std::io::stdout());
    let _ = DROPPED.set(writer.error_counter());
    let lines = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let traces = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(traces)
        .try_init();
    guard
}
