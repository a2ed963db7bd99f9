//! The Prometheus page (`GET /metrics`, OpenMetrics text). Event series
//! (requests, durations, batch sizes) live in a registry that grows as
//! requests are served; state series (queues, replicas, memory, cache,
//! prediction log) are read from a fresh snapshot at every scrape, so they
//! never go stale and always agree with `/api/optimized/stats`.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use std::sync::atomic::AtomicU64;

use gantry_actors::engine::pool_gate::PoolGateStats;
use gantry_actors::supervisor::ServerSnapshot;

use super::residency::{self, ResidencySeries};
use crate::cache::CacheStats;
use crate::store::StoreStats;

/// `model` label of requests for names that are not served (bounded cardinality).
pub const UNKNOWN_MODEL: &str = "_unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub model: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    model: String,
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaStateLabels {
    model: String,
    replica: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaDeviceLabels {
    model: String,
    replica: String,
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabels {
    level: String,
}

/// Latency buckets: 0.1 ms doubling up to the first bucket at or past the
/// request timeout, so every answer short of a 504 (and a 504 itself, just
/// past the deadline) lands in a finite bucket.
#[derive(Clone, Debug)]
pub struct LatencyBuckets(std::sync::Arc<[f64]>);

impl LatencyBuckets {
    pub fn reaching(timeout: std::time::Duration) -> LatencyBuckets {
        let top = timeout.as_secs_f64().max(0.0001);
        let mut buckets = vec![0.0001];
        while buckets[buckets.len() - 1] < top {
            buckets.push(buckets[buckets.len() - 1] * 2.0);
        }
        LatencyBuckets(buckets.into())
    }
}

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

pub type Latencies = Family<ModelLabels, Histogram, LatencyBuckets>;

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

/// Series recorded as events happen.
pub struct EventSeries {
    registry: Registry,
    pub requests: Family<StatusLabels, Counter>,
    pub request_duration: Latencies,
    pub queue_duration: Latencies,
    pub inference_duration: Latencies,
    pub batch_size: Family<ModelLabels, Histogram, fn() -> Histogram>,
    /// Uploaded files: decode, resize or resample, normalise.
    pub media_prepare_duration: Latencies,
    /// Outputs turned into masks or labels.
    pub media_postprocess_duration: Latencies,
    /// Requests refused because the batcher's mailbox was full; not a series
    /// of its own: added to `requests_rejected` (the batcher's count) at
    /// every scrape.
    mailbox_refusals: Family<ModelLabels, Counter>,
    /// Successes of models with `latency_target_ms`, answered within it
    /// and past it.
    within_target: Family<ModelLabels, Counter>,
    past_target: Family<ModelLabels, Counter>,
    /// Loads, evictions, scale-downs and waits for loads.
    pub residency: ResidencySeries,
}

impl Default for EventSeries {
    /// With buckets reaching the default request timeout.
    fn default() -> Self {
        EventSeries::new(std::time::Duration::from_millis(
            crate::config::ServerConfig::default().request_timeout_ms,
        ))
    }
}

impl EventSeries {
    /// The series, latency buckets reaching `request_timeout`.
    pub fn new(request_timeout: std::time::Duration) -> Self {
        let buckets = LatencyBuckets::reaching(request_timeout);
        let latency_histograms = || Family::new_with_constructor(buckets.clone());
        let mut registry = Registry::with_prefix("gantry");
        let requests = Family::<StatusLabels, Counter>::default();
        let request_duration = latency_histograms();
        let queue_duration = latency_histograms();
        let inference_duration = latency_histograms();
        let batch_size = Family::new_with_constructor(batch_histogram as fn() -> Histogram);
        registry.register(
            "requests",
            "Prediction requests answered, by model and HTTP status",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from arrival to answer of prediction requests",
            Unit::Seconds,
            request_duration.clone(),
        );
        registry.register_with_unit(
            "queue_duration",
            "Time requests waited in the batcher before inference",
            Unit::Seconds,
            queue_duration.clone(),
        );
        registry.register_with_unit(
            "inference_duration",
            "Time the engine took per batch",
            Unit::Seconds,
            inference_duration.clone(),
        );
        registry.register("batch_size", "Items per batch run", batch_size.clone());
        let media_prepare_duration = latency_histograms();
        let media_postprocess_duration = latency_histograms();
        registry.register_with_unit(
            "media_prepare_duration",
            "Time an uploaded file took to become the input tensor (pool wait, decode, resize or resample)",
            Unit::Seconds,
            media_prepare_duration.clone(),
        );
        registry.register_with_unit(
            "media_postprocess_duration",
            "Time outputs took to become a mask or labels",
            Unit::Seconds,
            media_postprocess_duration.clone(),
        );
        let within_target = Family::<ModelLabels, Counter>::default();
        let past_target = Family::<ModelLabels, Counter>::default();
        registry.register(
            "requests_within_target",
            "Successful prediction requests answered within the model's latency_target_ms",
            within_target.clone(),
        );
        registry.register(
            "requests_past_target",
            "Successful prediction requests answered later than the model's latency_target_ms",
            past_target.clone(),
        );
        let residency = ResidencySeries::register(&mut registry, latency_histograms());
        EventSeries {
            within_target,
            past_target,
            residency,
            registry,
            requests,
            request_duration,
            queue_duration,
            inference_duration,
            batch_size,
            media_prepare_duration,
            media_postprocess_duration,
            mailbox_refusals: Family::default(),
        }
    }
}

/// What a scrape reads besides the event series.
pub struct ScrapeInputs<'a> {
    pub snapshot: &'a ServerSnapshot,
    pub cache: Option<&'a CacheStats>,
    pub store: Option<&'a StoreStats>,
    /// The shared CPU pool's gate for long runs.
    pub pool_gate: PoolGateStats,
}

impl EventSeries {
    /// Counts a request refused at `model`'s full batcher mailbox.
    pub fn mailbox_refusal(&self, model: &str) {
        self.mailbox_refusals
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .inc();
    }

    /// Counts a success of a model with a latency target, `within` it or not.
    pub fn answered_for_target(&self, model: &ModelLabels, within: bool) {
        let family = if within {
            &self.within_target
        } else {
            &self.past_target
        };
        family.get_or_create(model).inc();
    }

    /// Requests refused at `model`'s full batcher mailbox since start.
    pub fn mailbox_refusals(&self, model: &str) -> u64 {
        self.mailbox_refusals
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .get()
    }

    /// The whole page: event series, then state series, then `# EOF`.
    pub fn render(&self, inputs: &ScrapeInputs) -> Result<String, std::fmt::Error> {
        let mut page = String::with_capacity(16 * 1024);
        encode_registry(&mut page, &self.registry)?;
        encode_registry(
            &mut page,
            &state_registry(inputs, |m| self.mailbox_refusals(m)),
        )?;
        encode_eof(&mut page)?;
        Ok(page)
    }
}

fn model(name: &str) -> ModelLabels {
    ModelLabels {
        model: name.to_string(),
    }
}

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

fn gauge(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

pub(super) const MB: i64 = 1024 * 1024;

/// A registry built from this scrape's snapshot; `mailbox_refusals` adds
/// the refusals the batchers never saw to theirs.
fn state_registry(inputs: &ScrapeInputs, mailbox_refusals: impl Fn(&str) -> u64) -> Registry {
    let mut r = Registry::with_prefix("gantry");
    let queue_depth = Family::<ModelLabels, Gauge>::default();
    let queue_capacity = Family::<ModelLabels, Gauge>::default();
    let rejected = Family::<ModelLabels, Counter>::default();
    let expired = Family::<ModelLabels, Counter>::default();
    let cancelled = Family::<ModelLabels, Counter>::default();
    let ready = Family::<ModelLabels, Gauge>::default();
    let inflight = Family::<ReplicaLabels, Gauge>::default();
    let state = Family::<ReplicaStateLabels, Gauge>::default();
    let restarts = Family::<ReplicaLabels, Counter>::default();
    let placed = Family::<ReplicaDeviceLabels, Gauge>::default();
    let target = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
    let refused_early = Family::<ModelLabels, Counter>::default();
    for m in &inputs.snapshot.models {
        let b = &m.batcher;
        if let Some(latency) = &b.latency {
            target
                .get_or_create(&model(&m.name))
                .set(latency.target_ms as f64 / 1000.0);
            refused_early
                .get_or_create(&model(&m.name))
                .inc_by(latency.refused_early);
        }
        queue_depth
            .get_or_create(&model(&m.name))
            .set(b.queue_depth as i64);
        queue_capacity
            .get_or_create(&model(&m.name))
            .set(b.queue_capacity as i64);
        rejected
            .get_or_create(&model(&m.name))
            .inc_by(b.counters.rejected + mailbox_refusals(&m.name));
        expired
            .get_or_create(&model(&m.name))
            .inc_by(b.counters.expired);
        cancelled
            .get_or_create(&model(&m.name))
            .inc_by(b.counters.cancelled);
        ready
            .get_or_create(&model(&m.name))
            .set(m.ready_replicas as i64);
        for replica in &b.replicas {
            let labels = ReplicaLabels {
                model: m.name.clone(),
                replica: replica.id.to_string(),
            };
            inflight.get_or_create(&labels).set(replica.inflight as i64);
            restarts.get_or_create(&labels).inc_by(replica.restarts);
            if let Some(device) = replica.device {
                let labels = ReplicaDeviceLabels {
                    model: m.name.clone(),
                    replica: replica.id.to_string(),
                    device: device.to_string(),
                };
                placed.get_or_create(&labels).set(1);
            }
            let labels = ReplicaStateLabels {
                model: m.name.clone(),
                replica: replica.id.to_string(),
                state: replica.state.name().to_string(),
            };
            state.get_or_create(&labels).set(1);
        }
    }
    r.register(
        "queue_depth",
        "Requests waiting in the model's batcher",
        queue_depth,
    );
    r.register(
        "queue_capacity",
        "Requests the model's queue holds at most; beyond, new ones are answered 429",
        queue_capacity,
    );
    r.register(
        "requests_rejected",
        "Requests refused with 429 because the queue (or the batcher's mailbox) was full",
        rejected,
    );
    r.register(
        "requests_expired",
        "Requests answered 504 because their deadline passed in the queue",
        expired,
    );
    r.register(
        "requests_cancelled",
        "Requests dropped before inference because the caller had gone",
        cancelled,
    );
    r.register_with_unit(
        "latency_target",
        "The model's latency_target_ms: the time its successes should answer within",
        Unit::Seconds,
        target,
    );
    r.register(
        "requests_refused_early",
        "Requests answered 429 at arrival because they were predicted to finish past the model's latency target",
        refused_early,
    );
    r.register(
        "model_ready_replicas",
        "Replicas ready to serve, per model",
        ready,
    );
    r.register(
        "replica_inflight",
        "Items a replica holds (running or waiting)",
        inflight,
    );
    r.register(
        "replica_state",
        "1 for the replica's current state (loading, ready, failed, refused)",
        state,
    );
    r.register(
        "replica_restarts",
        "Times a replica came back after losing its engine",
        restarts,
    );
    r.register(
        "replica_device",
        "The device each replica runs on (1 per replica, by device label)",
        placed,
    );
    super::devices::register(&mut r, &inputs.snapshot.memory.devices);

    if let Some(cache) = inputs.cache {
        let hits = Family::<LevelLabels, Counter>::default();
        let misses = Family::<LevelLabels, Counter>::default();
        let level = |name: &str| LevelLabels {
            level: name.to_string(),
        };
        hits.get_or_create(&level("l1")).inc_by(cache.l1.hits);
        misses.get_or_create(&level("l1")).inc_by(cache.l1.misses);
        if let Some(l2) = &cache.l2 {
            hits.get_or_create(&level("l2")).inc_by(l2.counters.hits);
            misses
                .get_or_create(&level("l2"))
                .inc_by(l2.counters.misses);
        }
        r.register("cache_hits", "Result cache hits by level", hits);
        r.register("cache_misses", "Result cache misses by level", misses);
        let coalesced = Counter::<u64>::default();
        coalesced.inc_by(cache.coalesced);
        r.register(
            "cache_coalesced",
            "Requests that missed while an identical request ran, answered with its outputs",
            coalesced,
        );
        r.register(
            "cache_entries",
            "Entries in the in-process cache",
            gauge(cache.l1.entries as i64),
        );
        if let Some(l2) = &cache.l2 {
            r.register(
                "cache_l2_up",
                "1 when Redis (the shared L2 cache) answers, 0 while it is skipped",
                gauge(i64::from(l2.status == "up")),
            );
        }
    }
    r.register(
        "log_lines_dropped",
        "Log lines dropped because the log writer was behind (log_writer::BUFFERED_BYTES)",
        counter(crate::logging::dropped_lines()),
    );
    r.register(
        "trace_spans_dropped",
        "Spans dropped because the trace export queue was full (telemetry.export_queue)",
        counter(crate::telemetry::dropped_spans()),
    );
    r.register(
        "trace_spans_export_failed",
        "Spans lost to trace exports that failed (collector down or refusing)",
        counter(crate::telemetry::failed_spans()),
    );
    let gate = &inputs.pool_gate;
    r.register(
        "cpu_pool_gate_runs",
        "CPU runs long enough to take the shared pool one at a time (runtime.exclusive_run_ms)",
        counter(gate.gated_runs),
    );
    r.register(
        "cpu_pool_gate_waits",
        "Of those, runs that waited for another run to finish",
        counter(gate.waited_runs),
    );
    let wait_seconds = Counter::<f64, AtomicU64>::default();
    wait_seconds.inc_by(gate.wait_us as f64 / 1e6);
    r.register(
        "cpu_pool_gate_wait_seconds",
        "Time runs waited for the shared pool",
        wait_seconds,
    );
    if let Some(store) = inputs.store {
        r.register(
            "prediction_log_rows_written",
            "Rows PostgreSQL reported stored in the prediction log",
            counter(store.rows_written),
        );
        r.register(
            "prediction_log_rows_already_stored",
            "Rows found already stored when a batch was written again",
            counter(store.rows_already_stored),
        );
        r.register(
            "prediction_log_rows_dropped",
            "Rows dropped because the buffer was full",
            counter(store.rows_dropped),
        );
        r.register(
            "prediction_log_buffer_depth",
            "Rows waiting to be written",
            gauge(store.buffer_depth as i64),
        );
        r.register(
            "prediction_log_up",
            "1 when PostgreSQL accepts writes",
            gauge(i64::from(store.status == "up")),
        );
    }
    residency::register_state(&mut r, inputs.snapshot);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_buckets_reach_the_request_timeout() {
        let buckets = LatencyBuckets::reaching(Duration::from_secs(30));
        let (first, last) = (buckets.0[0], buckets.0[buckets.0.len() - 1]);
        assert_eq!(first, 0.0001);
        assert!(
            last >= 30.0 && buckets.0[buckets.0.len() - 2] < 30.0,
            "{buckets:?}"
        );
        let long = LatencyBuckets::reaching(Duration::from_secs(600));
        assert!(long.0[long.0.len() - 1] >= 600.0, "{long:?}");
        // The page shows them: a 40 s answer lands in a finite bucket.
        let series = EventSeries::new(Duration::from_secs(30));
        let labels = ModelLabels { model: "m".into() };
        series.request_duration.get_or_create(&labels).observe(40.0);
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &series.registry).unwrap();
        assert!(
            page.contains(r#"gantry_request_duration_seconds_bucket{le="52.4288",model="m"} 1"#),
            "{page}"
        );
    }
}
