//! Where log lines go: appended to a buffer in memory by the thread that
//! logs them, and written to stdout in batches by a thread of its own
//! (`log-writer`), so a request's access line costs its worker the
//! formatting and a short lock, not a write to a pipe or a file that may
//! be slow, nor a wake of another thread.
//!
//! Hand-written rather than `tracing-appender`'s non-blocking writer, which
//! sends each line through a channel and so wakes its writer thread for
//! nearly every line: with every request logging its access line, that was
//! one more thread crossing per request (on the MLP at concurrency 1 it
//! made the access line the largest cost after the model itself; `make
//! bench` measures the server with the log on, as shipped). Here the writer
//! thread sleeps [`TICK`] between batches while lines come, and is woken
//! only by the first line after it went idle.
//!
//! The buffer holds [`BUFFERED_BYTES`]; lines beyond it are dropped rather
//! than block a request, and counted ([`LogWriter::dropped_lines`], in
//! Prometheus as `gantry_log_lines_dropped_total`). Dropping the
//! [`FlushGuard`] writes out what is buffered.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of lines the writer thread may be behind by before new lines are
/// dropped.
pub const BUFFERED_BYTES: usize = 16 << 20;

/// How long the writer thread waits between batches while lines come: the
/// most a line waits in memory.
pub const TICK: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer thread waits for a line (it found none), rather than
    /// sleeping out a tick.
    idle: bool,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes the writers `tracing-subscriber`'s fmt layer writes each line to.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread; dropping it writes out what is buffered and
/// stops the thread.
#[must_use = "dropping the guard stops the log writer"]
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// A writer of lines to `out`, and the guard of its thread.
    pub fn new(out: impl Write + Send + 'static) -> std::io::Result<(LogWriter, FlushGuard)> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = shared.clone();
                move || write_batches(&shared, out)
            })?;
        Ok((
            LogWriter {
                shared: shared.clone(),
            },
            FlushGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Lines dropped because the writer was [`BUFFERED_BYTES`] behind.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// One line's writer: the fmt layer writes a whole formatted line at once.
pub struct LineSink<'a> {
    shared: &'a Shared,
}

impl Write for LineSink<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.shared.pending();
        if pending.bytes.len() + line.len() > BUFFERED_BYTES {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        pending.bytes.extend_from_slice(line);
        if pending.idle {
            pending.idle = false;
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineSink<'a>;

    fn make_writer(&'a self) -> LineSink<'a> {
        LineSink {
            shared: &self.shared,
        }
    }
}

/// The writer thread: takes what is buffered, writes it, sleeps a tick;
/// waits when nothing came; ends once closing and empty.
fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::new();
    loop {
        let closing = {
            let mut pending = shared.pending();
            while pending.bytes.is_empty() && !pending.closing {
                pending.idle = true;
                pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            pending.idle = false;
            std::mem::swap(&mut pending.bytes, &mut spare);
            pending.closing
        };
        if !spare.is_empty() {
            // Nowhere to report a failed write but the log itself.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
        }
        if closing {
            if shared.pending().bytes.is_empty() {
                return;
            }
        } else {
            std::thread::sleep(TICK);
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        {
            let mut pending = self.shared.pending();
            pending.closing = true;
            self.shared.wake.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what the writer thread writes.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<Vec<u8>>>);

    impl Write for Collected {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(writer: &LogWriter, text: &str) {
        use tracing_subscriber::fmt::MakeWriter;
        writer.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_are_written_in_order_within_a_tick_and_all_of_them_at_the_end() {
        let out = Collected::default();
        let (writer, guard) = LogWriter::new(out.clone()).unwrap();
        line(&writer, "one\n");
        // The first line after idling wakes the thread.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..1000 {
            line(&writer, &format!("line {i}\n"));
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1001);
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1000], "line 999");
        assert_eq!(writer.dropped_lines(), 0);
    }

    #[test]
    fn lines_past_the_buffer_are_dropped_and_counted() {
        // A writer that never finishes its first write holds the thread.
        struct Stuck(Arc<std::sync::Barrier>);
        impl Write for Stuck {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.wait();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let release = Arc::new(std::sync::Barrier::new(2));
        let (writer, guard) = LogWriter::new(Stuck(release.clone())).unwrap();
        line(&writer, "first\n");
        std::thread::sleep(Duration::from_millis(50));
        let big = "x".repeat(BUFFERED_BYTES / 2 + 1);
        line(&writer, &big);
        line(&writer, &big);
        line(&writer, &big);
        assert_eq!(writer.dropped_lines(), 2);
        // The thread, released, writes what it kept (one write per batch).
        std::thread::spawn(move || loop {
            release.wait();
        });
        drop(guard);
    }
}
