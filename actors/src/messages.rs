//! Messages between HTTP handlers, batchers and replicas. Every request
//! carries its own reply channel, so whoever holds it answers exactly once.

use std::time::Instant;

use actix::Message;
use tokio::sync::oneshot;

use crate::error::InferError;
use crate::priority::Priority;
use crate::signature::ModelSignature;
use crate::tensor::Tensor;

/// What a request gets back when its batch ran.
#[derive(Debug)]
pub struct InferOutcome {
    /// All of the model's outputs, in signature order, with this request's rows.
    pub outputs: Vec<Tensor>,
    /// Items in the batch this request ran in.
    pub batch_size: usize,
    /// Replica that ran it.
    pub replica: usize,
    /// Time from arrival at the batcher to the start of inference.
    pub queue_ms: f64,
    /// Time the engine spent on the whole batch.
    pub inference_ms: f64,
    /// Time spent stacking the batch's inputs.
    pub input_ms: f64,
    /// Time spent splitting the batch's outputs into the requests' rows.
    pub output_ms: f64,
}

pub type InferReply = oneshot::Sender<Result<InferOutcome, InferError>>;

/// One validated request waiting for a batch.
#[derive(Debug)]
pub struct InferRequest {
    pub request_id: String,
    /// Inputs in signature order; stacked along dimension 0 when batched.
    pub inputs: Vec<Tensor>,
    /// Rows this request adds to a batch.
    pub items: usize,
    /// Past this instant the request is answered 504 instead of run.
    pub deadline: Instant,
    /// Higher levels leave the queue first; FIFO within a level.
    pub priority: Priority,
    /// The replica (id) that must run it while that replica is ready: a
    /// sequence's requests stay on the replica that ran its first one.
    pub pin: Option<usize>,
    /// When the batcher received it (set on arrival).
    pub enqueued: Instant,
    /// The request's tracing span, so log lines on the batcher and the
    /// replica thread carry its request id.
    pub span: tracing::Span,
    /// Its wait in the batcher's queue: a `queue` span under `span`, opened
    /// by the batcher on arrival and closed at dispatch (in a trace, the
    /// queue wait; `Span::none()` until then).
    pub waiting: tracing::Span,
    pub reply: InferReply,
}

impl InferRequest {
    /// Answers the caller; a caller that has gone is not an error.
    pub fn answer(self, result: Result<InferOutcome, InferError>) {
        let _ = self.reply.send(result);
    }

    /// The caller dropped its end (client disconnected or timed out).
    pub fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Handler → batcher: queue a request.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub InferRequest);

/// Batcher → replica: run these requests as one batch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunBatch {
    pub batch_id: u64,
    pub entries: Vec<InferRequest>,
}

/// Replica → batcher: the engine is loaded and warmed up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplicaReady {
    pub replica: usize,
    pub signature: ModelSignature,
}

/// Replica → batcher: the engine could not be loaded (or was lost).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplicaFailed {
    pub replica: usize,
    pub error: String,
}

/// Replica → batcher: a batch finished (answers are already sent).
#[derive(Message)]
#[rtype(result = "()")]
pub struct BatchDone {
    pub replica: usize,
    pub items: usize,
    /// Items whose requests were answered with an error (a batch split
    /// after a failure can answer some requests and fail others).
    pub failed_items: usize,
    /// The engine itself failed (a panic or a run error that is not out of
    /// memory and not a rejected input); counts toward reloading it.
    pub engine_fault: bool,
}

/// Replica → batcher: a batch ran out of memory and was split; batches of
/// `largest_ok` items ran (0 when none did). Sent before its `BatchDone`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RanOutOfMemory {
    pub replica: usize,
    /// Items of the batch that ran out of memory first.
    pub batch_size: usize,
    pub largest_ok: usize,
}

/// Replica → batcher: warmup measured the memory one item of a batch needs.
/// Sent before `ReplicaReady`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ItemMemoryMeasured {
    pub replica: usize,
    pub mb_per_item: u64,
}
