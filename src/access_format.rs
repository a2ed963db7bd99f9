//! The access line written straight into the log's writer, in the shape the
//! `tracing-subscriber` layer gives every other line (text or JSON), without
//! a trip through its event machinery: formatting one field at a time
//! through `dyn Value` visitors, the timestamp through `fmt::Write`, cost
//! some 14,000 instructions a line, about a tenth of a small request's
//! whole path (`make profile`).
//!
//! Taken only when the lines are plain (no terminal colours) and no span is
//! made (traces off, level `info` or coarser: see [`crate::logging`]), so
//! an access line never lacks the span context it would otherwise carry;
//! otherwise [`crate::access_line::line`] logs a `tracing` event as before.
//! A unit test holds the two shapes equal, field by field.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

use crate::access_line::Line;
use crate::log_writer::LogWriter;

/// Where access lines go directly, and in which shape; unset (the `tracing`
/// event is logged) until [`crate::logging::init`] finds the lines plain.
static DIRECT: OnceLock<(LogWriter, Shape)> = OnceLock::new();

/// The log's line shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Text,
    Json,
}

/// Sends access lines to `writer` in `shape` from now on.
pub fn write_directly(writer: LogWriter, shape: Shape) {
    let _ = DIRECT.set((writer, shape));
}

thread_local! {
    /// The line being formatted, and the timestamp's text up to the second
    /// with the second it holds: formatted once a second per thread.
    static SCRATCH: RefCell<(Vec<u8>, i64, String)> = RefCell::new((Vec::with_capacity(256), i64::MIN, String::new()));
}

/// Writes `line` to the log directly when it may; false when the caller
/// must log it as a `tracing` event.
pub fn write(line: &Line<'_>) -> bool {
    let Some((writer, shape)) = DIRECT.get() else {
        return false;
    };
    SCRATCH.with_borrow_mut(|(text, second, prefix)| {
        text.clear();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs() as i64;
        if *second != secs {
            *second = secs;
            prefix.clear();
            date_time(prefix, secs);
        }
        let micros = now.subsec_micros();
        format(text, *shape, prefix, micros, line);
        let _ = writer.make_writer().write(text);
    });
    true
}

/// `line` in `shape`, stamped `prefix` (up to the second) and `micros`.
fn format(out: &mut Vec<u8>, shape: Shape, prefix: &str, micros: u32, l: &Line<'_>) {
    let mut number = itoa::Buffer::new();
    match shape {
        Shape::Text => {
            let _ = write!(
                out,
                "{prefix}.{micros:06}Z  INFO access protocol={}",
                l.protocol
            );
            out.extend_from_slice(" method=".as_bytes());
            out.extend_from_slice(l.method.as_bytes());
            let _ = write!(out, " path={:?} status=", l.path);
            out.extend_from_slice(number.format(l.status).as_bytes());
            if let Some(model) = l.model {
                out.extend_from_slice(" model=".as_bytes());
                out.extend_from_slice(model.as_bytes());
            }
            let _ = write!(out, " duration_ms={:?}", rounded(l.duration_ms));
            for (key, value) in [(" bytes_in=", l.bytes_in), (" bytes_out=", l.bytes_out)] {
                if let Some(value) = value {
                    out.extend_from_slice(key.as_bytes());
                    out.extend_from_slice(number.format(value).as_bytes());
                }
            }
            for (key, value) in [(" request_id=", l.request_id), (" trace_id=", l.trace_id)] {
                if let Some(value) = value {
                    out.extend_from_slice(key.as_bytes());
                    out.extend_from_slice(value.as_bytes());
                }
            }
        }
        Shape::Json => {
            let _ = write!(out, "{{\"timestamp\":\"{prefix}.{micros:06}Z\",\"level\":\"INFO\",\"message\":\"access\"");
            json_str(out, "protocol", l.protocol);
            json_str(out, "method", l.method);
            json_str(out, "path", l.path);
            out.extend_from_slice(",\"status\":".as_bytes());
            out.extend_from_slice(number.format(l.status).as_bytes());
            if let Some(model) = l.model {
                json_str(out, "model", model);
            }
            out.extend_from_slice(",\"duration_ms\":".as_bytes());
            let mut float = zmij::Buffer::new();
            out.extend_from_slice(json_float(&mut float, rounded(l.duration_ms)).as_bytes());
            for (key, value) in [("bytes_in", l.bytes_in), ("bytes_out", l.bytes_out)] {
                if let Some(value) = value {
                    let _ = write!(out, ",\"{key}\":{}", number.format(value));
                }
            }
            for (key, value) in [("request_id", l.request_id), ("trace_id", l.trace_id)] {
                if let Some(value) = value {
                    json_str(out, key, value);
                }
            }
            out.push(b'}');
        }
    }
    out.push(b'\n');
}

/// The duration as the line gives it: milliseconds to the microsecond.
fn rounded(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// `,"key":"value"`, the value escaped as JSON.
fn json_str(out: &mut Vec<u8>, key: &str, value: &str) {
    let _ = write!(out, ",\"{key}\":");
    // Writing JSON into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// A float as `serde_json` writes it (finite: zmij; otherwise `null`).
fn json_float(buffer: &mut zmij::Buffer, value: f64) -> &str {
    if value.is_finite() {
        buffer.format_finite(value)
    } else {
        "null"
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS` (UTC), as
/// `tracing-subscriber`'s timestamps begin.
fn date_time(out: &mut String, secs: i64) {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = crate::store::civil_from_days(days);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::prelude::*;

    /// Lines written through `tracing-subscriber`, kept.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Kept {
        type Writer = Kept;
        fn make_writer(&'a self) -> Kept {
            self.clone()
        }
    }

    /// `line` as the log's layer writes it in `format`, its timestamp
    /// replaced by `T`.
    fn through_tracing(format: LogFormat, line: &Line<'_>) -> String {
        let kept = Kept::default();
        let subscriber = tracing_subscriber::registry().with(crate::logging::line_layer(
            format,
            kept.clone(),
            false,
        ));
        tracing::subscriber::with_default(subscriber, || crate::access_line::event(line));
        let text = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
        without_timestamp(&text)
    }

    fn without_timestamp(text: &str) -> String {
        let start = text.find("20").expect("a timestamp");
        let end = start + text[start..].find('Z').expect("its Z") + 1;
        format!("{}T{}", &text[..start], &text[end..])
    }

    fn directly(shape: Shape, line: &Line<'_>) -> String {
        let mut out = Vec::new();
        format(&mut out, shape, "2026-12-07T01:02:03", 4, line);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("2026-12-07T01:02:03.000004Z"), "{out}");
        without_timestamp(&out)
    }

    #[test]
    fn the_direct_line_is_the_layers_line_in_both_shapes() {
        let full = Line {
            protocol: "http",
            method: "POST",
            path: "/v2/models/m/infer",
            status: 200,
            model: Some("tiny-classifier"),
            duration_ms: 0.123_456_7,
            bytes_in: Some(1234),
            bytes_out: Some(56),
            request_id: Some("4bf92f35-77b3"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        };
        let bare = Line {
            protocol: "grpc",
            method: "POST",
            path: "/inference.GRPCInferenceService/ModelInfer",
            status: 503,
            model: None,
            duration_ms: 0.0,
            bytes_in: None,
            bytes_out: None,
            request_id: None,
            trace_id: None,
        };
        let mut lines = vec![full, bare];
        for (path, duration_ms) in [
            ("/a \"b\" \\ c\n\t\u{7}", 1.0),
            ("/é/😀/\u{1b}[31m", 12_345.678_9),
            ("/x?y=1&z=%20", 1e-9),
            ("/", 250.5),
        ] {
            lines.push(Line {
                path,
                duration_ms,
                ..lines[0]
            });
        }
        for line in &lines {
            for (format, shape) in [
                (LogFormat::Text, Shape::Text),
                (LogFormat::Json, Shape::Json),
            ] {
                assert_eq!(directly(shape, line), through_tracing(format, line));
            }
        }
    }

    #[test]
    fn dates_are_the_civil_calendars() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_796_601_599, "2026-12-06T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
        ] {
            let mut out = String::new();
            date_time(&mut out, secs);
            assert_eq!(out, text, "{secs}");
        }
    }
}
