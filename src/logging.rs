//! Logging through `tracing-subscriber`: `RUST_LOG` when set, else the
//! configured level; human-readable text or one JSON object per line.
//! Text is coloured only on a terminal: log files and collectors get plain
//! lines (and every request's span is formatted without escape codes).
//!
//! Lines go to stdout through [`crate::log_writer`]: buffered in memory and
//! written by a thread of its own in batches.
//!
//! Spans (a request's, its wait in the queue, its batch) cost every request
//! their creation and the formatting of their fields, so they are made only
//! when something reads them: the traces exporter when traces are on
//! ([`crate::telemetry`]), or the log lines when the level is `debug` or
//! finer (each line then names the spans it is in, a request's id among
//! them). At the shipped `info` level with traces off no span is made; the
//! access line names each request's id, and is then written straight to the
//! writer in the layer's own shape ([`crate::access_format`]).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::EnvFilter;

use crate::access_format::Shape;
use crate::config::LogFormat;
use crate::log_writer::{FlushGuard, LogWriter};

static WRITER: OnceLock<LogWriter> = OnceLock::new();

/// Lines dropped since start because the writer thread was
/// [`crate::log_writer::BUFFERED_BYTES`] behind.
pub fn dropped_lines() -> u64 {
    WRITER.get().map_or(0, LogWriter::dropped_lines)
}

/// The filter of `level`, or of `RUST_LOG` when set.
fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level))
}

/// The layer that writes every log line to `writer` in `format`,
/// coloured when `ansi`.
pub(crate) fn line_layer<S, W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    let lines = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
}

/// Installs the global subscriber; a second call does nothing. With a
/// `tracer` ([`crate::telemetry`]) spans are exported as traces too. Keep
/// the guard until the process ends: dropping it writes out what is
/// buffered.
pub fn init(
    format: LogFormat,
    level: &str,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> std::io::Result<FlushGuard> {
    use tracing_subscriber::prelude::*;
    let (writer, guard) = LogWriter::new(std::io::stdout())?;
    let _ = WRITER.set(writer.clone());
    let filter = filter(level);
    // Spans only for a reader of them (see the module's doc): a filter of
    // the whole subscriber, so a span no one reads is never made.
    let read_spans = tracer.is_some() || filter.max_level_hint() >= Some(LevelFilter::DEBUG);
    let spans = filter_fn(move |meta| read_spans || !meta.is_span());
    let ansi = std::io::stdout().is_terminal();
    let lines = line_layer(format, writer.clone(), ansi);
    let traces = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(spans)
        .with(lines)
        .with(traces)
        .try_init();
    if installed.is_ok() && !read_spans && !ansi {
        // No span to name on an access line, no colours: the access line
        // goes straight to the writer in the same shape.
        let shape = match format {
            LogFormat::Text => Shape::Text,
            LogFormat::Json => Shape::Json,
        };
        crate::access_format::write_directly(writer, shape);
    }
    Ok(guard)
}
