//! The record of one prediction request, opened when the request arrives and
//! finished once, at the edge, with the status the client was actually sent:
//! the metrics (status counts per model, latency, queue time, refusals at the
//! batcher's mailbox) and the prediction log row come from it, so a request
//! that fails after inference (an unknown output name, a full media pool
//! while shaping a mask) is counted and logged with that failure, never as
//! the success inference was.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gantry_actors::ModelHandle;
use uuid::Uuid;

use super::Prediction;
use crate::cache::CacheLevel;
use crate::metrics::{Metrics, RequestRecord};
use crate::request_id::{new_prediction_id, Requested};
use crate::store::{PredictionLog, PredictionRow};
use crate::triton::statistics::{ComputeTimes, RequestOutcome};

/// What ran, for the record.
#[derive(Debug, Clone, Copy)]
struct Ran {
    queue_ms: f64,
    inference_ms: f64,
    input_ms: f64,
    output_ms: f64,
    items: usize,
    cache_lookup_ms: Option<f64>,
    batch_size: Option<usize>,
    replica: Option<usize>,
    cache: Option<CacheLevel>,
}

/// A request's record, not yet finished. Finish it exactly once with
/// [`Pending::finish_with`] and the status the client was sent (the edges
/// do: `crate::api::answer` for HTTP, the gRPC inference call); dropping
/// it records nothing (the client left before any answer was sent).
#[must_use = "a pending record counts nothing until it is finished"]
pub struct Pending {
    metrics: Arc<Metrics>,
    log: Option<Arc<PredictionLog>>,
    started: Instant,
    created_at: SystemTime,
    prediction_id: Uuid,
    request: Requested,
    /// The model, once the request named one that is served.
    pub(super) model: Option<Arc<ModelHandle>>,
    /// The request reached its model's service with decoded inputs: it has
    /// (or, with no log configured, would have) a row under its id.
    pub(super) reached: bool,
    /// Hex SHA-256 of the inputs, once decoded (what a log row needs).
    pub(super) input_sha256: Option<String>,
    ran: Option<Ran>,
    /// The batcher's mailbox was full: refused before the batcher saw it.
    pub(super) refused_at_mailbox: bool,
}

impl Pending {
    pub(super) fn open(
        metrics: Arc<Metrics>,
        log: Option<Arc<PredictionLog>>,
        request: Requested,
    ) -> Pending {
        Pending {
            metrics,
            log,
            started: Instant::now(),
            created_at: SystemTime::now(),
            prediction_id: new_prediction_id(),
            request,
            model: None,
            reached: false,
            input_sha256: None,
            ran: None,
            refused_at_mailbox: false,
        }
    }

    /// The id this prediction is logged under (answered to the client).
    pub fn prediction_id(&self) -> Uuid {
        self.prediction_id
    }

    /// The request id the batcher and the log see.
    pub fn request_id(&self) -> &str {
        &self.request.id
    }

    /// True once the request reached its model with decoded inputs: its
    /// prediction id then names a record of the prediction log.
    pub fn reached_model(&self) -> bool {
        self.reached
    }

    /// The served model the request is attributed to, if any.
    pub fn model_name(&self) -> Option<&str> {
        self.model.as_deref().map(ModelHandle::name)
    }

    /// Attributes the request to `model` (a served model), so failures
    /// before inference (a file that cannot be decoded, a full media pool)
    /// are counted for it.
    pub fn attribute(&mut self, model: Arc<ModelHandle>) {
        self.model = Some(model);
    }

    /// Notes what ran (or which cache answered).
    pub(super) fn ran(&mut self, p: &Prediction) {
        self.ran = Some(Ran {
            queue_ms: p.queue_ms,
            inference_ms: p.inference_ms,
            input_ms: p.input_ms,
            output_ms: p.output_ms,
            items: p.items,
            cache_lookup_ms: p.cache_lookup_ms,
            batch_size: p.batch_size,
            replica: p.replica,
            cache: p.cache,
        });
    }

    /// Finishes the record with `status` sent for it (and the error's
    /// message, if it failed).
    pub fn finish_with(self, status: u16, error: Option<String>) {
        let duration = self.started.elapsed();
        let model = self.model.as_deref();
        let ran = self.ran.filter(|r| r.cache.is_none());
        self.metrics.record(RequestRecord {
            model: model.map(ModelHandle::name),
            status,
            duration,
            queued: ran.map(|r| Duration::from_secs_f64(r.queue_ms.max(0.0) / 1000.0)),
            target: model
                .and_then(|m| m.spec.settings.latency_target_ms)
                .map(Duration::from_millis),
        });
        if let Some(model) = model {
            self.metrics
                .statistics
                .record_request(model.name(), &request_outcome(status, duration, self.ran));
        }
        if let Some(model) = model.filter(|_| self.refused_at_mailbox) {
            self.metrics.record_mailbox_refusal(model.name());
        }
        let (Some(log), Some(model), Some(input_sha256)) = (&self.log, model, self.input_sha256)
        else {
            return;
        };
        let ok = status < 400;
        log.record(PredictionRow {
            prediction_id: self.prediction_id,
            request_id: self.request.id,
            request_id_from_client: self.request.from_client,
            model: model.name().to_string(),
            model_version: model.spec.version.clone(),
            input_sha256,
            status: if ok { "ok" } else { "error" },
            http_status: status,
            error: if ok { None } else { error },
            queue_ms: ran.map(|r| r.queue_ms),
            inference_ms: ran.map(|r| r.inference_ms),
            total_ms: duration.as_secs_f64() * 1000.0,
            batch_size: self.ran.and_then(|r| r.batch_size).map(|n| n as u32),
            replica: self.ran.and_then(|r| r.replica).map(|n| n as u32),
            cache_level: self.ran.and_then(|r| r.cache).map(CacheLevel::as_str),
            created_at: self.created_at,
            trace: crate::telemetry::current_span_context(),
        });
    }
}

/// What Triton's statistics count of a request answered `status`.
fn request_outcome(status: u16, duration: Duration, ran: Option<Ran>) -> RequestOutcome {
    let ms = |v: f64| Duration::from_secs_f64(v.max(0.0) / 1000.0);
    RequestOutcome {
        ok: status < 400,
        duration,
        items: ran.map_or(1, |r| r.items),
        ran: ran.filter(|r| r.cache.is_none()).map(|r| {
            let phases = ComputeTimes {
                input: ms(r.input_ms),
                infer: ms(r.inference_ms),
                output: ms(r.output_ms),
            };
            (ms(r.queue_ms), phases)
        }),
        cache: ran.and_then(|r| Some((r.cache.is_some(), ms(r.cache_lookup_ms?)))),
    }
}
