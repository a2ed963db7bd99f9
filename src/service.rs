//! The inference service: what every predict endpoint calls after decoding.
//! It finds the model, validates inputs against its signature, hands the
//! request to the model's batcher, waits for the answer within the deadline,
//! and records the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_actors::messages::InferRequest;
use gantry_actors::{InferError, ModelHandle, Serving, Tensor};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// A decoded prediction request.
#[derive(Debug)]
pub struct PredictCall {
    pub request_id: String,
    pub inputs: Vec<(String, Tensor)>,
    /// Overrides `server.request_timeout_ms`.
    pub timeout: Option<Duration>,
}

/// A finished prediction.
#[derive(Debug)]
pub struct Prediction {
    pub model: Arc<ModelHandle>,
    /// Every output of the model, in signature order, with its name.
    pub outputs: Vec<(String, Tensor)>,
    pub batch_size: usize,
    pub replica: usize,
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
}

/// Shared by all HTTP workers.
pub struct InferenceService {
    pub serving: Serving,
    pub metrics: Arc<Metrics>,
    pub default_timeout: Duration,
}

impl InferenceService {
    /// The model called `name`, or `UnknownModel`.
    pub fn model(&self, name: &str) -> Result<Arc<ModelHandle>, InferError> {
        self.serving
            .model(name)
            .ok_or_else(|| InferError::UnknownModel(name.to_string()))
    }

    /// Runs one prediction end to end and records it.
    pub async fn predict(&self, model: &str, call: PredictCall) -> Result<Prediction, InferError> {
        let started = Instant::now();
        let handle = self.model(model);
        let result = match &handle {
            Ok(handle) => self.run(handle.clone(), call, started).await,
            Err(e) => Err(e.clone()),
        };
        let served = handle.as_ref().ok().map(|h| h.name());
        self.metrics.record(
            served,
            result.is_ok(),
            started.elapsed().as_secs_f64() * 1000.0,
        );
        result
    }

    async fn run(
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
            enqueued: started,
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
            outputs,
            batch_size: outcome.batch_size,
            replica: outcome.replica,
            queue_ms: outcome.queue_ms,
            inference_ms: outcome.inference_ms,
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}
