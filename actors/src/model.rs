//! A served model as the service sees it: its spec, its signature once a
//! replica has loaded, its readiness, and the address of its batcher
//! ([`BatcherAddr`]: one `Recipient` per message the batcher takes, so that
//! a handle never names the batcher's type).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::{RecipientRequest, SendError};
use actix::{Actor, Addr, Context, Handler, Message, Recipient};

use crate::admission::would_finish_late;
use crate::error::InferError;
use crate::memory::BudgetFreed;
use crate::messages::{
    AttachReplica, DrainReplica, Enqueue, GetBatcherSnapshot, InferRequest, ModelDemanded,
    RetireModel,
};
pub use crate::model_state::{ModelState, Residency};
use crate::repository::ModelSpec;
use crate::signature::ModelSignature;

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
    /// Where a request for a model out of memory asks for it to be loaded.
    pub supervisor: Option<Recipient<ModelDemanded>>,
}

impl ModelHandle {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// True when at least one replica is ready.
    pub fn is_ready(&self) -> bool {
        self.state.ready_replicas() > 0
    }

    /// True when the model can take requests, in memory or not (see
    /// [`ModelState::is_servable`]).
    pub fn is_servable(&self) -> bool {
        self.state.is_servable()
    }

    /// The signature, once a replica has loaded and while the model can
    /// serve (in memory or not: a request for a model out of memory waits
    /// in its batcher while it loads); an error otherwise.
    pub fn ready_signature(&self) -> Result<&ModelSignature, InferError> {
        match (self.state.signature(), self.state.residency()) {
            (_, Residency::Failed(reason)) => Err(InferError::ModelUnavailable {
                model: self.spec.name.clone(),
                reason,
            }),
            (Some(sig), _) => Ok(sig),
            (None, _) => Err(InferError::ModelNotReady(self.spec.name.clone())),
        }
    }

    /// The signature, loading the model first when no replica of it has
    /// ever loaded (it did not fit at startup): waits for the load until
    /// `deadline`. The first request for such a model pays its load.
    pub async fn loaded_signature(&self, deadline: Instant) -> Result<&ModelSignature, InferError> {
        let started = Instant::now();
        loop {
            match self.ready_signature() {
                Err(InferError::ModelNotReady(_)) => {}
                known => return known,
            }
            // Asked again while it waits, as a batcher with waiting
            // requests does: room may only come once replicas turn idle.
            if self.state.residency() == Residency::Cold {
                self.demand();
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(InferError::LoadTimedOut {
                    model: self.spec.name.clone(),
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            let tick = now + crate::batcher::LOAD_TICK;
            self.state.signature_change(tick.min(deadline)).await;
        }
    }

    /// Asks the supervisor to bring the model into memory.
    pub fn demand(&self) {
        if let Some(supervisor) = &self.supervisor {
            supervisor.do_send(ModelDemanded {
                model: self.spec.name.clone(),
                state: self.state.clone(),
            });
        }
    }

    /// Runs a validated request of `items` on the calling thread when the
    /// model's batcher allows it and one of its replicas is idle (see
    /// [`crate::inline_run`]); `None` when it must go to the batcher
    /// ([`ModelHandle::submit`]). A request pinned to a replica always
    /// goes there.
    pub fn run_inline(
        &self,
        inputs: &[crate::tensor::Tensor],
        items: usize,
        deadline: Instant,
        pin: Option<usize>,
    ) -> Option<Result<crate::messages::InferOutcome, InferError>> {
        if pin.is_some() || self.spec.settings.sequence.is_some() {
            return None;
        }
        self.state
            .inline
            .run(&self.state.usage, inputs, items, deadline)
    }

    /// Hands a request to the batcher without waiting: a full mailbox is a
    /// full queue (429), a closed one a batcher that has stopped. With a
    /// latency target, a request the batcher's last prediction says would
    /// finish late is refused here (429, see [`crate::admission`]).
    pub fn submit(&self, request: InferRequest) -> Result<(), InferError> {
        if let Some(target) = self.spec.settings.latency_target_ms {
            let target = Duration::from_millis(target);
            let door = &self.state.door;
            if let Some(late) =
                door.refuses(request.priority, target, request.enqueued, request.deadline)
            {
                return Err(would_finish_late(&self.spec.name, target, late));
            }
        }
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
