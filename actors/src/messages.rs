//! Every message a model's actors exchange: HTTP handlers, the supervisor
//! and its lifecycle operations to a batcher, a batcher to its replicas and
//! back, with what each answers. Every request carries its own reply
//! channel, so whoever holds it answers exactly once.
//!
//! They live here, apart from the actors that handle them, so that a
//! replica and a model's handle reach the batcher through `Recipient`s
//! without naming its type, and the batcher names neither of theirs beyond
//! what it starts. The memory budget's messages, and those the supervisor
//! itself answers, stay with those actors: their answers are those modules'
//! own types.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Message;
use tokio::sync::oneshot;

use crate::device::Device;
use crate::engine::EngineFactory;
use crate::error::InferError;
use crate::memory::Reservation;
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

/// Batcher → replica: drop the engine and load it again (it kept failing).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadEngine;

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
    /// Its engine, which workers may run short requests on (see
    /// [`crate::inline_run`]).
    pub engine: Arc<crate::inline_run::SharedEngine>,
    pub signature: ModelSignature,
    /// The MB the loaded, warmed engine holds on its device, where it
    /// could be measured.
    pub footprint_mb: Option<u64>,
    /// Its weights are mapped from a file rather than held in memory.
    pub weights_mapped: bool,
    /// Warmup's last runs: batch size and how long each took.
    pub warmup_runs: Vec<(usize, Duration)>,
}

/// Replica → batcher: the engine could not be loaded (or was lost).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplicaFailed {
    pub replica: usize,
    pub error: String,
}

/// A worker → batcher: a request run on the worker's thread (see
/// [`crate::inline_run`]) panicked in replica `replica`'s engine, which the
/// worker dropped; its `items` count as the replica's errors, and the
/// replica fails (and restarts) as after [`ReplicaFailed`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct InlineRunPanicked {
    pub replica: usize,
    pub items: usize,
    pub error: String,
}

/// Replica → batcher: its engine is dropped (its memory given back to the
/// system) and its thread ends. A drained replica's reservation is kept
/// until then, so that a model loaded in its room never overlaps it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplicaStopped {
    pub replica: usize,
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
    /// How long the whole run took (stacking, the engine, splitting).
    pub took: Duration,
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

/// Supervisor → batcher: start replica `id` when its reservation was
/// granted, or record that the budget refused it (the slot then waits for
/// room). The batcher starts the replica itself so that the replica's slot
/// exists before the replica can report back. A message that is never
/// handled (the batcher stopped) drops its reservation, giving it back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachReplica {
    pub id: usize,
    pub factory: Arc<dyn EngineFactory>,
    pub warmup: u32,
    pub reservation: Reservation,
    /// The batcher asked again for a slot it already has (see
    /// [`BudgetFreed`](crate::memory::BudgetFreed)); a slot gone since then
    /// takes nothing.
    pub retry: bool,
    /// Refused, the model stays out of memory until asked for: no slot is
    /// kept waiting for room (models that did not fit at startup).
    pub cold_if_refused: bool,
}

/// Batcher or model handle → supervisor: requests are waiting for a model
/// that has no replica in memory (or one that could load): bring one in,
/// making room by evicting idle replicas of other models when the budget
/// is full. `state` tells the instance apart from a replaced one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ModelDemanded {
    pub model: String,
    pub state: Arc<crate::model_state::ModelState>,
}

/// Supervisor → batcher: remove replica `id` once it has finished what it
/// holds (scale-down). A refused replica goes at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainReplica {
    pub id: usize,
}

/// Supervisor → batcher: the model is being removed. Requests already queued
/// are still served; then every replica drains and the batcher stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetireModel;

/// Asks a batcher for its [`BatcherSnapshot`] (stats, metrics, health).
#[derive(Message)]
#[rtype(result = "BatcherSnapshot")]
pub struct GetBatcherSnapshot;

/// A batcher's view for stats: the answer to [`GetBatcherSnapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatcherSnapshot {
    pub queue_depth: usize,
    /// Requests the queue holds at most (`queue_capacity`); beyond, 429.
    pub queue_capacity: usize,
    /// The batch cap in force now.
    pub max_batch_size: usize,
    /// What set it.
    pub cap_reason: CapReason,
    /// MB one item needs, when configured or measured.
    pub memory_per_item_mb: Option<u64>,
    pub window_ms: u64,
    pub counters: BatcherCounters,
    pub replicas: Vec<ReplicaSnapshot>,
    /// The latency target's figures, when the model has one.
    pub latency: Option<LatencySnapshot>,
}

/// What a model's latency target decided, for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    pub target_ms: u64,
    /// Requests refused 429 at arrival: predicted to finish late.
    pub refused_early: u64,
    /// Of those, refused where they arrived, by the batcher's last
    /// prediction (see [`crate::admission`]).
    pub refused_at_door: u64,
    /// The last arrival's predicted time to answer (queue and run), ms.
    pub predicted_ms: Option<f64>,
}

/// One replica's view for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSnapshot {
    pub id: usize,
    /// Where it runs; `None` while refused (it holds no device yet).
    pub device: Option<Device>,
    pub state: ReplicaState,
    pub inflight: usize,
    pub processed: u64,
    pub errors: u64,
    pub restarts: u64,
    /// Why its last start failed, until it is ready again (a restart
    /// after a failure shows `loading` with the failure kept here).
    pub last_error: Option<String>,
    /// MB its claim on the budget holds (0 while refused): the estimate
    /// until its footprint is measured, then the footprint (unless
    /// `memory_mb` sets it).
    pub reserved_mb: u64,
    /// MB its loaded, warmed engine was measured to hold; `None` before it
    /// loaded, or where its device's memory cannot be read.
    pub measured_mb: Option<u64>,
    /// Its loaded engine maps its weights from a file (a load on demand,
    /// see [`crate::engine::mapped_weights`]).
    pub weights_mapped: bool,
    /// Its run time by batch size (the median of the last runs), ms.
    pub run_ms: Vec<(usize, f64)>,
}

/// Lifecycle of a replica as its batcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaState {
    Loading,
    Ready,
    Failed(String),
    /// The memory budget could not hold it; it was never started.
    Refused(String),
    /// Being removed: finishes what it holds, takes nothing new.
    Draining,
}

impl ReplicaState {
    pub fn name(&self) -> &'static str {
        match self {
            ReplicaState::Loading => "loading",
            ReplicaState::Ready => "ready",
            ReplicaState::Failed(_) => "failed",
            ReplicaState::Refused(_) => "refused",
            ReplicaState::Draining => "draining",
        }
    }
}

/// What set a batcher's batch cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReason {
    /// `max_batch_size` from `model.toml`.
    MaxBatchSize,
    /// The model has no dynamic batch dimension: one request at a time.
    Unbatched,
    /// The free memory budget over the memory one item needs.
    MemoryBudget,
    /// A batch ran out of memory recently: the largest size that then ran.
    OutOfMemory,
    /// The largest batch whose run fits half the latency target.
    LatencyTarget,
}

impl CapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CapReason::MaxBatchSize => "max_batch_size",
            CapReason::Unbatched => "unbatched",
            CapReason::MemoryBudget => "memory_budget",
            CapReason::LatencyTarget => "latency_target",
            CapReason::OutOfMemory => "out_of_memory",
        }
    }
}

/// Counters a batcher keeps for stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatcherCounters {
    pub batches: u64,
    pub items: u64,
    /// Of `batches`, those run on the thread that received the request
    /// (see [`crate::inline_run`]).
    pub inline_runs: u64,
    /// `batch_sizes[n]` counts the batches of `n` items.
    pub batch_sizes: Vec<u64>,
    pub expired: u64,
    pub cancelled: u64,
    pub rejected: u64,
}
