//! A served model as the HTTP layer sees it: its spec, its signature once a
//! replica has loaded, its readiness, and the address of its batcher.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use actix::Addr;

use crate::batcher::Batcher;
use crate::error::InferError;
use crate::messages::{Enqueue, InferRequest};
use crate::repository::ModelSpec;
use crate::signature::ModelSignature;

/// State shared by a model's batcher (which writes it) and its handle (read
/// on every request, without a message round trip).
#[derive(Debug, Default)]
pub struct ModelState {
    signature: OnceLock<ModelSignature>,
    ready_replicas: AtomicUsize,
    desired_replicas: AtomicUsize,
}

impl ModelState {
    pub fn signature(&self) -> Option<&ModelSignature> {
        self.signature.get()
    }

    /// Records the signature the first replica read from its session.
    pub fn set_signature(&self, signature: ModelSignature) {
        let _ = self.signature.set(signature);
    }

    pub fn ready_replicas(&self) -> usize {
        self.ready_replicas.load(Ordering::Relaxed)
    }

    pub fn set_ready_replicas(&self, n: usize) {
        self.ready_replicas.store(n, Ordering::Relaxed);
    }

    /// Replicas the operator asked for (config or scaling).
    pub fn desired_replicas(&self) -> usize {
        self.desired_replicas.load(Ordering::Relaxed)
    }

    pub fn set_desired_replicas(&self, n: usize) {
        self.desired_replicas.store(n, Ordering::Relaxed);
    }
}

/// A model being served.
#[derive(Debug)]
pub struct ModelHandle {
    pub spec: ModelSpec,
    pub state: Arc<ModelState>,
    pub batcher: Addr<Batcher>,
}

impl ModelHandle {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// True when at least one replica is ready.
    pub fn is_ready(&self) -> bool {
        self.state.ready_replicas() > 0
    }

    /// The signature, once the model is ready; `ModelNotReady` before.
    pub fn ready_signature(&self) -> Result<&ModelSignature, InferError> {
        match self.state.signature() {
            Some(sig) if self.is_ready() => Ok(sig),
            _ => Err(InferError::ModelNotReady(self.spec.name.clone())),
        }
    }

    /// Hands a request to the batcher without waiting: a full mailbox is a
    /// full queue (429), a closed one a batcher that has stopped.
    pub fn submit(&self, request: InferRequest) -> Result<(), InferError> {
        self.batcher
            .try_send(Enqueue(request))
            .map_err(|e| match e {
                actix::dev::SendError::Full(_) => InferError::QueueFull {
                    model: self.spec.name.clone(),
                    capacity: self.spec.settings.queue_capacity,
                },
                actix::dev::SendError::Closed(_) => InferError::ShuttingDown,
            })
    }
}
