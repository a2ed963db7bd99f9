//! The inference service: what every predict endpoint calls after decoding.
//! It finds the model, answers from the result cache when it can, else
//! validates inputs against the model's signature, hands the request to the
//! model's batcher and waits for the answer within the deadline; then it
//! caches a success, records the outcome in the metrics and queues a row for
//! the prediction log (never waiting on it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix_web::ResponseError;
use gantry_actors::messages::InferRequest;
use gantry_actors::{InferError, ModelHandle, Priority, Serving, Tensor};
use tokio::sync::oneshot;

use crate::cache::{CacheKey, CacheLevel, Outputs, ResultCache};
use crate::error::ApiError;
use crate::metrics::{Metrics, RequestRecord};
use crate::request_id::as_uuid;
use crate::store::{PredictionLog, PredictionRow};

/// A decoded prediction request.
#[derive(Debug)]
pub struct PredictCall {
    pub request_id: String,
    pub inputs: Vec<(String, Tensor)>,
    /// Overrides `server.request_timeout_ms`.
    pub timeout: Option<Duration>,
    /// False when the caller asked to bypass the cache.
    pub use_cache: bool,
    /// Where the request queues among the model's waiting requests.
    pub priority: Priority,
}

/// A finished prediction.
#[derive(Debug)]
pub struct Prediction {
    pub model: Arc<ModelHandle>,
    /// Every output of the model, in signature order, with its name.
    pub outputs: Outputs,
    /// Batch and replica that ran it; `None` when the cache answered.
    pub batch_size: Option<usize>,
    pub replica: Option<usize>,
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
    /// The cache level that answered, if any.
    pub cache: Option<CacheLevel>,
}

/// Shared by all HTTP workers.
pub struct InferenceService {
    pub serving: Serving,
    pub metrics: Arc<Metrics>,
    pub default_timeout: Duration,
    pub cache: Option<Arc<ResultCache>>,
    pub log: Option<Arc<PredictionLog>>,
    /// Set on SIGTERM/SIGINT: readiness turns 503 and new requests are
    /// refused while in-flight ones finish.
    pub shutting_down: AtomicBool,
}

impl InferenceService {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The model called `name`, or `UnknownModel`.
    pub fn model(&self, name: &str) -> Result<Arc<ModelHandle>, InferError> {
        self.serving
            .model(name)
            .ok_or_else(|| InferError::UnknownModel(name.to_string()))
    }

    /// Runs one prediction end to end and records it.
    pub async fn predict(&self, model: &str, call: PredictCall) -> Result<Prediction, InferError> {
        let started = Instant::now();
        let created_at = SystemTime::now();
        let handle = match self
            .model(model)
            .and_then(|h| match self.is_shutting_down() {
                true => Err(InferError::ShuttingDown),
                false => Ok(h),
            }) {
            Ok(handle) => handle,
            Err(e) => {
                self.metrics.record(RequestRecord {
                    model: None,
                    status: status_of(&e),
                    duration: started.elapsed(),
                    queued: None,
                });
                return Err(e);
            }
        };
        let request_id = call.request_id.clone();
        let key = (self.cache.is_some() || self.log.is_some())
            .then(|| CacheKey::of(handle.name(), &handle.spec.version, &call.inputs));
        let result = self.run(handle.clone(), call, key, started).await;
        let duration = started.elapsed();
        let total_ms = duration.as_secs_f64() * 1000.0;
        self.metrics.record(RequestRecord {
            model: Some(handle.name()),
            status: result.as_ref().map_or_else(status_of, |_| 200),
            duration,
            queued: result
                .as_ref()
                .ok()
                .filter(|p| p.cache.is_none())
                .map(|p| Duration::from_secs_f64(p.queue_ms / 1000.0)),
        });
        if let (Some(log), Some(key)) = (&self.log, &key) {
            log.record(row(
                &handle,
                &request_id,
                key,
                &result,
                total_ms,
                created_at,
            ));
        }
        result
    }

    /// Passes `decoded` on, counting an error as a request that failed
    /// before it reached a model (a body or file that did not decode, say).
    pub fn counted<T>(&self, decoded: Result<T, ApiError>) -> Result<T, ApiError> {
        if let Err(e) = &decoded {
            self.metrics.record(RequestRecord {
                model: None,
                status: e.status_code().as_u16(),
                duration: Duration::ZERO,
                queued: None,
            });
        }
        decoded
    }

    async fn run(
        &self,
        model: Arc<ModelHandle>,
        call: PredictCall,
        key: Option<CacheKey>,
        started: Instant,
    ) -> Result<Prediction, InferError> {
        let cache = self.cache.as_ref().filter(|_| call.use_cache).zip(key);
        if let Some((cache, key)) = cache {
            if let Some((outputs, level)) = cache.get(&key).await {
                return Ok(Prediction {
                    model,
                    outputs,
                    batch_size: None,
                    replica: None,
                    queue_ms: 0.0,
                    inference_ms: 0.0,
                    total_ms: started.elapsed().as_secs_f64() * 1000.0,
                    cache: Some(level),
                });
            }
        }
        let prediction = self.infer(model, call, started).await?;
        if let Some((cache, key)) = cache {
            cache.put(key, prediction.outputs.clone());
        }
        Ok(prediction)
    }

    async fn infer(
        &self,
        model: Arc<ModelHandle>,
        call: PredictCall,
        started: Instant,
    ) -> Result<Prediction, InferError> {
        let signature = model.ready_signature()?;
        let validated = signature.validate(call.inputs, model.spec.settings.max_batch_size)?;
        let deadline = started + call.timeout.unwrap_or(self.default_timeout);
        let (reply, answer) = oneshot::channel();
        model.submit(InferRequest {
            request_id: call.request_id,
            inputs: validated.tensors,
            items: validated.items,
            deadline,
            priority: call.priority,
            enqueued: started,
            span: tracing::Span::current(),
            reply,
        })?;
        let outcome = match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_dropped)) => {
                return Err(InferError::Inference(
                    "the request was lost by the actor system".into(),
                ))
            }
            Err(_elapsed) => {
                return Err(InferError::DeadlineExceeded {
                    waited_ms: started.elapsed().as_millis() as u64,
                })
            }
        };
        let outputs = signature
            .outputs
            .iter()
            .zip(outcome.outputs)
            .map(|(spec, mut tensor)| {
                if validated.batch_dim_added && tensor.shape.first() == Some(&1) {
                    tensor.shape.remove(0);
                }
                (spec.name.clone(), tensor)
            })
            .collect();
        Ok(Prediction {
            model,
            outputs: Arc::new(outputs),
            batch_size: Some(outcome.batch_size),
            replica: Some(outcome.replica),
            queue_ms: outcome.queue_ms,
            inference_ms: outcome.inference_ms,
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
            cache: None,
        })
    }
}

/// The HTTP status an error is answered with (mapped in one place, `crate::error`).
fn status_of(e: &InferError) -> u16 {
    ApiError::Infer(e.clone()).status_code().as_u16()
}

/// The prediction-log row of one outcome.
fn row(
    model: &ModelHandle,
    request_id: &str,
    key: &CacheKey,
    result: &Result<Prediction, InferError>,
    total_ms: f64,
    created_at: SystemTime,
) -> PredictionRow {
    let (status, http_status, error) = match result {
        Ok(_) => ("ok", 200, None),
        Err(e) => ("error", status_of(e), Some(e.to_string())),
    };
    let ran = result.as_ref().ok();
    PredictionRow {
        request_id: as_uuid(request_id),
        model: model.name().to_string(),
        model_version: model.spec.version.clone(),
        input_sha256: key.hex(),
        status,
        http_status,
        error,
        queue_ms: ran.filter(|p| p.cache.is_none()).map(|p| p.queue_ms),
        inference_ms: ran.filter(|p| p.cache.is_none()).map(|p| p.inference_ms),
        total_ms,
        batch_size: ran.and_then(|p| p.batch_size).map(|n| n as u32),
        replica: ran.and_then(|p| p.replica).map(|n| n as u32),
        cache_level: ran.and_then(|p| p.cache).map(CacheLevel::as_str),
        created_at,
    }
}
