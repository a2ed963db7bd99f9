//! One prediction end to end: find the model, answer from the result cache
//! when it can (or from the identical request already running), else
//! validate the inputs against the model's signature, hand the request to
//! the model's batcher with its own reply channel and wait for the answer
//! within the deadline; then cache a success. What the request leaves
//! behind is noted on its [`Pending`] record.
//!
//! The reply channel made in [`InferenceService::infer`] travels in the
//! [`InferRequest`] to the batcher (`gantry_actors::batcher`), in a batch
//! to a replica's thread (`gantry_actors::replica`), and is answered there
//! with this request's slice of the batch's outputs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_actors::messages::InferRequest;
use gantry_actors::signature::ModelSignature;
use gantry_actors::{InferError, ModelHandle, Priority, Tensor};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::sequences::SequenceCall;
use super::{InferenceService, Outputs, Pending};
use crate::cache::coalesce::Turn;
use crate::cache::{CacheKey, CacheLevel};
use crate::error::ApiError;

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
    pub priority: Option<Priority>,
    /// Its place in a sequence, for a sequence model.
    pub sequence: Option<SequenceCall>,
    /// The replica that must run it while ready (set for sequences).
    pub pin: Option<usize>,
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
    /// Stacking the batch's inputs and splitting its outputs.
    pub input_ms: f64,
    pub output_ms: f64,
    pub total_ms: f64,
    /// Items the request held (its batch dimension).
    pub items: usize,
    /// The cache level that answered, if any.
    pub cache: Option<CacheLevel>,
    /// How long asking the cache took, when it was asked.
    pub cache_lookup_ms: Option<f64>,
}

impl InferenceService {
    /// Runs one prediction end to end, noting on `pending` what the record
    /// needs (the model, the inputs' hash, what ran); the caller finishes it
    /// with the status it answers.
    pub async fn predict(
        &self,
        model: &str,
        call: PredictCall,
        pending: &mut Pending,
    ) -> Result<Prediction, InferError> {
        let started = Instant::now();
        let handle = self.model(model)?;
        pending.attribute(handle.clone());
        if self.is_shutting_down() {
            return Err(InferError::ShuttingDown);
        }
        pending.reached = true;
        if handle.spec.settings.sequence.is_some() || call.sequence.is_some() {
            let prediction = self
                .predict_in_sequence(handle, call, started, pending)
                .await?;
            pending.ran(&prediction);
            return Ok(prediction);
        }
        let key = (self.cache.is_some() || self.log.is_some())
            .then(|| CacheKey::of(handle.name(), &handle.spec.sha256, &call.inputs));
        if self.log.is_some() {
            pending.input_sha256 = key.as_ref().map(CacheKey::hex);
        }
        let prediction = self.run(handle, call, key, started, pending).await?;
        pending.ran(&prediction);
        Ok(prediction)
    }

    async fn run(
        &self,
        model: Arc<ModelHandle>,
        call: PredictCall,
        key: Option<CacheKey>,
        started: Instant,
        pending: &mut Pending,
    ) -> Result<Prediction, InferError> {
        let cache = self.cache.as_ref().filter(|_| call.use_cache).zip(key);
        let mut cache_lookup_ms = None;
        let mut leader = None;
        if let Some((cache, key)) = cache {
            let asked = Instant::now();
            let span = tracing::info_span!("cache.lookup", cache.hit = tracing::field::Empty);
            let found = cache.get(&key).instrument(span.clone()).await;
            span.record("cache.hit", found.is_some());
            let lookup_ms = asked.elapsed().as_secs_f64() * 1000.0;
            if let Some((outputs, level)) = found {
                return Ok(answered_from(
                    model, &call, outputs, level, started, lookup_ms,
                ));
            }
            cache_lookup_ms = Some(lookup_ms);
            match cache.join(key) {
                Turn::Lead(lead) => leader = Some(lead),
                Turn::Follow(follower) => {
                    let deadline = self.deadline(&model, call.timeout, started);
                    match tokio::time::timeout_at(deadline.into(), follower.outputs()).await {
                        Ok(Some(outputs)) => {
                            let level = CacheLevel::Coalesced;
                            return Ok(answered_from(
                                model, &call, outputs, level, started, lookup_ms,
                            ));
                        }
                        // The leader ended without outputs: run it here.
                        Ok(None) => {}
                        Err(_elapsed) => {
                            return Err(InferError::DeadlineExceeded {
                                waited_ms: started.elapsed().as_millis() as u64,
                            })
                        }
                    }
                }
            }
        }
        // A leader that fails is dropped here, and its followers run their own.
        let mut prediction = self.infer(model, call, started, pending).await?;
        prediction.cache_lookup_ms = cache_lookup_ms;
        if let Some((cache, key)) = cache {
            cache.put(key, prediction.outputs.clone());
        }
        if let Some(leader) = leader {
            leader.publish(prediction.outputs.clone());
        }
        Ok(prediction)
    }

    /// `model`'s signature, loading the model first when no replica of it
    /// ever loaded (see [`ModelHandle::loaded_signature`]); such a wait is
    /// counted in `gantry_load_wait_duration_seconds`.
    pub async fn signature_of<'m>(
        &self,
        model: &'m ModelHandle,
        deadline: Instant,
    ) -> Result<&'m ModelSignature, InferError> {
        match model.ready_signature() {
            Err(InferError::ModelNotReady(_)) => {}
            known => return known,
        }
        let started = Instant::now();
        let signature = model.loaded_signature(deadline).await;
        if signature.is_ok() {
            self.metrics()
                .series
                .residency
                .waited(model.name(), started.elapsed());
        }
        signature
    }

    /// When a call to `model` that arrived at `started` with `timeout` (or
    /// none) must have its answer: the call's timeout, else the server's
    /// default; a model with its own queue timeout (Triton's queue policy)
    /// uses that, shortened by the call's only where the policy allows.
    pub(super) fn deadline(
        &self,
        model: &ModelHandle,
        timeout: Option<std::time::Duration>,
        started: Instant,
    ) -> Instant {
        let within = match model.spec.settings.queue_timeout {
            None => timeout.unwrap_or(self.default_timeout),
            Some(policy) => match timeout.filter(|_| policy.allow_override) {
                Some(asked) => asked.min(policy.default),
                None => policy.default,
            },
        };
        started + within
    }

    pub(super) async fn infer(
        &self,
        model: Arc<ModelHandle>,
        call: PredictCall,
        started: Instant,
        pending: &mut Pending,
    ) -> Result<Prediction, InferError> {
        let deadline = self.deadline(&model, call.timeout, started);
        let signature = self.signature_of(&model, deadline).await?;
        let reshape = &model.spec.settings.reshape;
        let mut inputs = call.inputs;
        for (name, tensor) in inputs.iter_mut() {
            if let Some(r) = reshape.iter().find(|r| r.input && r.name == *name) {
                tensor.shape = r
                    .to_model(&tensor.shape)
                    .map_err(InferError::InvalidInput)?;
            }
        }
        let validated = signature.validate(inputs, model.spec.settings.max_batch_size)?;
        let priority = model.spec.settings.priority_of(call.priority)?;
        let inline = model.run_inline(&validated.tensors, validated.items, deadline, call.pin);
        let outcome = match inline {
            Some(ran) => ran?,
            None => {
                let (reply, answer) = oneshot::channel();
                let request = InferRequest {
                    request_id: call.request_id,
                    inputs: validated.tensors,
                    items: validated.items,
                    deadline,
                    priority,
                    pin: call.pin,
                    enqueued: started,
                    span: tracing::Span::current(),
                    waiting: tracing::Span::none(),
                    reply,
                };
                through_batcher(&model, request, answer, started, pending).await?
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
                if let Some(r) = reshape.iter().find(|r| !r.input && r.name == spec.name) {
                    tensor.shape = r.to_client(&tensor.shape);
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
            input_ms: outcome.input_ms,
            output_ms: outcome.output_ms,
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
            items: validated.items,
            cache: None,
            cache_lookup_ms: None,
        })
    }
}

/// Hands `request` to `model`'s batcher and waits for its answer on
/// `answer` until its deadline.
async fn through_batcher(
    model: &ModelHandle,
    request: InferRequest,
    answer: oneshot::Receiver<Result<gantry_actors::InferOutcome, InferError>>,
    started: Instant,
    pending: &mut Pending,
) -> Result<gantry_actors::InferOutcome, InferError> {
    let deadline = request.deadline;
    model.submit(request).inspect_err(|e| {
        // The batcher never saw it, so its own count misses it.
        pending.refused_at_mailbox = matches!(e, InferError::QueueFull { .. });
    })?;
    match tokio::time::timeout_at(deadline.into(), answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_dropped)) => Err(InferError::Inference(
            "the request was lost by the actor system".into(),
        )),
        Err(_elapsed) => Err(InferError::DeadlineExceeded {
            waited_ms: started.elapsed().as_millis() as u64,
        }),
    }
}

/// The answer to a request whose outputs came without an inference of its
/// own: from a cache level, or from the identical request that ran.
fn answered_from(
    model: Arc<ModelHandle>,
    call: &PredictCall,
    outputs: Outputs,
    level: CacheLevel,
    started: Instant,
    lookup_ms: f64,
) -> Prediction {
    let items = model
        .state
        .signature()
        .map_or(1, |s| s.items_of(&call.inputs));
    Prediction {
        model,
        outputs,
        batch_size: None,
        replica: None,
        queue_ms: 0.0,
        inference_ms: 0.0,
        input_ms: 0.0,
        output_ms: 0.0,
        total_ms: started.elapsed().as_secs_f64() * 1000.0,
        items,
        cache: Some(level),
        cache_lookup_ms: Some(lookup_ms),
    }
}

/// A call's timeout, priority (`None`: the model's default) and sequence.
pub type CallParameters = (Option<Duration>, Option<Priority>, Option<SequenceCall>);

/// What a request's `parameters` say of how it runs, as Triton names them
/// (over HTTP and gRPC alike): `timeout` (microseconds; else the header's),
/// `priority` (1 high to 3 low, 0 the model's default; else the header's)
/// and the sequence parameters (`sequence_id`, `sequence_start`,
/// `sequence_end`).
pub fn call_parameters(
    parameters: &Map<String, Value>,
    header_timeout: Option<Duration>,
    header_priority: Option<Priority>,
) -> Result<CallParameters, ApiError> {
    let timeout = match parameters.get("timeout") {
        None => header_timeout,
        Some(v) => Some(Duration::from_micros(
            v.as_u64().filter(|&us| us > 0).ok_or_else(|| {
                ApiError::BadRequest(
                    "parameters.timeout must be a positive integer (microseconds)".into(),
                )
            })?,
        )),
    };
    let priority = match parameters.get("priority") {
        None => header_priority,
        // Triton's "the model's default level".
        Some(v) if v.as_i64() == Some(0) => None,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "parameters.priority must be an integer from 1 (high) to 3 (low), not {v}"
                ))
            })
            .and_then(|level| {
                Priority::from_level(level)
                    .map(Some)
                    .map_err(|e| ApiError::BadRequest(format!("parameters.{e}")))
            })?,
    };
    let sequence = SequenceCall::from_parameters(parameters).map_err(ApiError::BadRequest)?;
    Ok((timeout, priority, sequence))
}

/// The outputs named in `only` (in that order), or all; an unknown name is 422.
pub fn select_outputs<'a>(
    outputs: &'a [(String, Tensor)],
    only: Option<&[String]>,
) -> Result<Vec<&'a (String, Tensor)>, ApiError> {
    let Some(names) = only else {
        return Ok(outputs.iter().collect());
    };
    names
        .iter()
        .map(|name| {
            outputs.iter().find(|(n, _)| n == name).ok_or_else(|| {
                let known: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
                ApiError::InvalidTensor(format!("unknown output '{name}'; the model has {known:?}"))
            })
        })
        .collect()
}
