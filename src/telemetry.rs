//! Traces over OTLP/HTTP (protobuf): `tracing` spans become OpenTelemetry
//! spans (`tracing-opentelemetry`), exported to `telemetry.otlp_endpoint`
//! (or `OTEL_EXPORTER_OTLP_ENDPOINT`) with the resource `service.name`
//! `gantry`, `service.version` and `service.instance.id`. A request that
//! carries a W3C `traceparent` continues the client's trace
//! ([`parent_from`]); new traces are sampled at `telemetry.sampling_ratio`.
//!
//! Export never slows a request: a finished span goes into a bounded queue
//! (`telemetry.export_queue`) with `try_send`, and a thread of its own
//! batches the queue and posts it; when the queue is full (a slow or dead
//! collector) the span is dropped and counted
//! (`gantry_trace_spans_dropped_total`), as are spans a failed export lost
//! (`gantry_trace_spans_export_failed_total`). The SDK's batch processor
//! only logs its drops, hence this small processor of our own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor, Tracer,
};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};

/// Traces exported over OTLP: the `[telemetry]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended); empty
    /// means `OTEL_EXPORTER_OTLP_ENDPOINT`, and with neither traces are off.
    pub otlp_endpoint: String,
    /// The share of new traces recorded (0 to 1); a request that continues
    /// a client's trace follows the client's sampling decision.
    pub sampling_ratio: f64,
    /// Spans that may wait for export; beyond, new ones are dropped (and
    /// counted), so a slow or absent collector never slows a request.
    pub export_queue: usize,
    /// `service.instance.id`; empty means the host name.
    pub instance: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            sampling_ratio: 1.0,
            export_queue: 2048,
            instance: String::new(),
        }
    }
}

/// Spans posted in one export at most.
const BATCH: usize = 512;
/// How long a finished span may wait for a batch to fill.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

static DROPPED: AtomicU64 = AtomicU64::new(0);
static ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once traces are exported: spans then look for the client's trace
/// context (without an exporter that work is skipped).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}
static EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);

/// Spans dropped since start because the export queue was full.
pub fn dropped_spans() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Spans lost since start to exports that failed.
pub fn failed_spans() -> u64 {
    EXPORT_FAILED.load(Ordering::Relaxed)
}

/// Traces being exported; [`Telemetry::shutdown`] posts what is queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
    pub endpoint: String,
}

impl Telemetry {
    /// Starts the exporter when an endpoint is configured (or in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`); `None` when traces are off.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Telemetry>, String> {
        let endpoint = match config.otlp_endpoint.trim() {
            "" => std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default(),
            set => set.to_string(),
        };
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        if endpoint.is_empty() {
            return Ok(None);
        }
        let traces_url = format!("{endpoint}/v1/traces");
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&traces_url)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint {endpoint}: {e}"))?;
        let instance = match config.instance.trim() {
            "" => host_name(),
            set => set.to_string(),
        };
        let resource = Resource::builder()
            .with_service_name("gantry")
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", instance),
            ])
            .build();
        exporter.set_resource(&resource);
        let processor = BoundedExport::start(exporter, config.export_queue)
            .map_err(|e| format!("cannot start the trace export thread: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sampling_ratio,
            ))))
            .with_span_processor(processor)
            .build();
        ON.store(true, Ordering::Relaxed);
        Ok(Some(Telemetry {
            provider,
            endpoint: traces_url,
        }))
    }

    pub fn tracer(&self) -> Tracer {
        self.provider.tracer("gantry")
    }

    /// Posts what is queued and stops the export thread.
    pub fn shutdown(self) {
        let _ = self.provider.shutdown();
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gantry".into())
}

/// The current span's OpenTelemetry context, when traces are on and it
/// has one (a span elsewhere can link to it after it has ended).
pub fn current_span_context() -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// The client's trace context from W3C `traceparent` / `tracestate`
/// headers (or gRPC metadata), read through `get`.
pub fn parent_from<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Context {
    let carrier: std::collections::HashMap<String, String> = ["traceparent", "tracestate"]
        .iter()
        .filter_map(|key| get(key).map(|value| (key.to_string(), value.to_string())))
        .collect();
    TraceContextPropagator::new().extract(&carrier)
}

enum Job {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
    Stop,
}

/// The span processor: a bounded queue in front of one export thread.
#[derive(Debug)]
struct BoundedExport {
    queue: SyncSender<Job>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl BoundedExport {
    fn start<E: SpanExporter + 'static>(exporter: E, capacity: usize) -> std::io::Result<Self> {
        let (queue, jobs) = sync_channel(capacity.max(1));
        let worker = std::thread::Builder::new()
            .name("trace-export".into())
            .spawn(move || export_loop(exporter, jobs))?;
        Ok(BoundedExport {
            queue,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Sends a control job and waits (at most `timeout`) for the thread.
    fn control(
        &self,
        make: impl FnOnce(SyncSender<()>) -> Job,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done, wait) = sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut job = make(done);
        loop {
            match self.queue.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return Err(OTelSdkError::Timeout(timeout)),
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(Job::Span(Box::new(span))).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Job::Flush, Duration::from_secs(10))
    }

    /// Posts what is queued and stops the thread, within `timeout`: a
    /// thread still busy then (a collector that does not answer) is left
    /// behind rather than holding up the process's exit.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let flushed = self.control(Job::Flush, timeout);
        let mut stop = Job::Stop;
        loop {
            match self.queue.try_send(stop) {
                Ok(()) => {
                    let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(worker) = worker {
                        let _ = worker.join();
                    }
                    break;
                }
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    stop = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
        flushed
    }
}

/// The export thread: batches of at most [`BATCH`] spans, posted when full,
/// after [`FLUSH_EVERY`], on a flush and at the end.
fn export_loop<E: SpanExporter>(exporter: E, jobs: Receiver<Job>) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    let mut since = Instant::now();
    let post = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let count = spans.len() as u64;
        if let Err(e) = block_on(exporter.export(spans)) {
            EXPORT_FAILED.fetch_add(count, Ordering::Relaxed);
            tracing::debug!(error = %e, spans = count, "trace export failed");
        }
    };
    loop {
        let wait = FLUSH_EVERY.saturating_sub(since.elapsed());
        match jobs.recv_timeout(wait) {
            Ok(Job::Span(span)) => {
                if batch.is_empty() {
                    since = Instant::now();
                }
                batch.push(*span);
                if batch.len() >= BATCH {
                    post(&mut batch);
                }
            }
            Ok(Job::Flush(done)) => {
                post(&mut batch);
                let _ = done.send(());
            }
            Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => {
                post(&mut batch);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                post(&mut batch);
                since = Instant::now();
            }
        }
    }
}

/// Runs a future to its end on this thread. The exporter's HTTP client is
/// the blocking one, so its futures finish when first polled; this waits
/// properly should one not (std only: no executor crate for it).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
