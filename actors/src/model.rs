//! A served model as the service sees it: its spec, its signature once a
//! replica has loaded, its readiness, and the address of its batcher
//! ([`BatcherAddr`]: one `Recipient` per message the batcher takes, so that
//! a handle never names the batcher's type).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use actix::dev::{RecipientRequest, SendError};
use actix::{Actor, Addr, Context, Handler, Message, Recipient};

use crate::error::InferError;
use crate::memory::BudgetFreed;
use crate::messages::{
    AttachReplica, DrainReplica, Enqueue, GetBatcherSnapshot, InferRequest, RetireModel,
};
use crate::readiness::Readiness;
use crate::repository::ModelSpec;
use crate::signature::ModelSignature;

/// State shared by a model's batcher (which writes it) and its handle (read
/// on every request, without a message round trip).
#[derive(Debug, Default)]
pub struct ModelState {
    signature: OnceLock<ModelSignature>,
    ready_replicas: AtomicUsize,
    desired_replicas: AtomicUsize,
    /// Told when the model turns ready or stops being ready.
    readiness: Readiness,
    /// The footprint its replicas were last measured to hold (0: not yet).
    measured_mb: AtomicU64,
}

impl ModelState {
    /// The state of a model whose readiness changes go to `readiness`.
    pub fn new(readiness: Readiness) -> ModelState {
        ModelState {
            readiness,
            ..ModelState::default()
        }
    }

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
        let before = self.ready_replicas.swap(n, Ordering::Relaxed);
        if (before > 0) != (n > 0) {
            self.readiness.changed();
        }
    }

    /// The largest MB a replica of this model (on the CPU) was measured to
    /// hold, once one loaded where memory can be read.
    pub fn measured_mb(&self) -> Option<u64> {
        Some(self.measured_mb.load(Ordering::Relaxed)).filter(|&mb| mb > 0)
    }

    /// Notes a measured footprint; the largest one measured stays, so one
    /// low reading cannot shrink what later replicas reserve.
    pub(crate) fn raise_measured_mb(&self, mb: u64) {
        self.measured_mb.fetch_max(mb, Ordering::Relaxed);
    }

    /// Replicas the operator asked for (config or scaling).
    pub fn desired_replicas(&self) -> usize {
        self.desired_replicas.load(Ordering::Relaxed)
    }

    pub fn set_desired_replicas(&self, n: usize) {
        self.desired_replicas.store(n, Ordering::Relaxed);
    }
}

/// A model's batcher as the rest of the system reaches it: the service
/// (requests, snapshots), the supervisor (replicas to attach or drain, the
/// model's retirement) and the memory budget (room given back). Sending
/// reads as on an `Addr`: `batcher.send(GetBatcherSnapshot)`,
/// `batcher.do_send(RetireModel)`. All of its recipients lead to the one
/// mailbox, so messages keep the order they were sent in.
#[derive(Debug, Clone)]
pub struct BatcherAddr {
    enqueue: Recipient<Enqueue>,
    snapshot: Recipient<GetBatcherSnapshot>,
    attach: Recipient<AttachReplica>,
    drain: Recipient<DrainReplica>,
    retire: Recipient<RetireModel>,
    budget_freed: Recipient<BudgetFreed>,
}

impl BatcherAddr {
    /// The address of `batcher`, an actor that takes every message a
    /// batcher takes from outside.
    pub fn new<A>(batcher: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<Enqueue>
            + Handler<GetBatcherSnapshot>
            + Handler<AttachReplica>
            + Handler<DrainReplica>
            + Handler<RetireModel>
            + Handler<BudgetFreed>,
    {
        BatcherAddr {
            enqueue: batcher.clone().recipient(),
            snapshot: batcher.clone().recipient(),
            attach: batcher.clone().recipient(),
            drain: batcher.clone().recipient(),
            retire: batcher.clone().recipient(),
            budget_freed: batcher.clone().recipient(),
        }
    }

    /// Sends `msg` and waits for the answer (see [`Recipient::send`]).
    pub fn send<M>(&self, msg: M) -> RecipientRequest<M>
    where
        M: BatcherMessage,
        M::Result: Send,
    {
        M::recipient(self).send(msg)
    }

    /// Sends `msg` even into a full mailbox; a stopped batcher drops it
    /// (see [`Recipient::do_send`]).
    pub fn do_send<M>(&self, msg: M)
    where
        M: BatcherMessage,
        M::Result: Send,
    {
        M::recipient(self).do_send(msg)
    }

    /// Sends `msg` unless the mailbox is full or closed (see
    /// [`Recipient::try_send`]).
    pub fn try_send<M>(&self, msg: M) -> Result<(), SendError<M>>
    where
        M: BatcherMessage,
        M::Result: Send,
    {
        M::recipient(self).try_send(msg)
    }

    /// The batcher as a recipient of `M` alone, for whoever sends it only
    /// that (the memory budget's waiters).
    pub fn recipient<M>(&self) -> Recipient<M>
    where
        M: BatcherMessage,
        M::Result: Send,
    {
        M::recipient(self).clone()
    }
}

/// A message a batcher takes from outside: which of [`BatcherAddr`]'s
/// recipients carries it.
pub trait BatcherMessage: Message + Send + Sized + 'static
where
    Self::Result: Send,
{
    fn recipient(batcher: &BatcherAddr) -> &Recipient<Self>;
}

macro_rules! batcher_message {
    ($($message:ty => $field:ident),* $(,)?) => {$(
        impl BatcherMessage for $message {
            fn recipient(batcher: &BatcherAddr) -> &Recipient<Self> {
                &batcher.$field
            }
        }
    )*};
}

batcher_message! {
    Enqueue => enqueue,
    GetBatcherSnapshot => snapshot,
    AttachReplica => attach,
    DrainReplica => drain,
    RetireModel => retire,
    BudgetFreed => budget_freed,
}

/// A model being served.
#[derive(Debug)]
pub struct ModelHandle {
    pub spec: ModelSpec,
    pub state: Arc<ModelState>,
    pub batcher: BatcherAddr,
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
                SendError::Full(_) => InferError::QueueFull {
                    model: self.spec.name.clone(),
                    capacity: self.spec.settings.queue_capacity,
                },
                SendError::Closed(_) => InferError::ShuttingDown,
            })
    }
}
