//! The batcher of one model: it queues requests, forms batches and sends each
//! to the replica with the fewest items in flight (ties round-robin).
//!
//! A batch leaves when it is full (`max_batch_size` items), when its oldest
//! request has waited `batch_window_ms`, or at once when a replica is idle, so
//! a lone request at low load does not wait the window. Requests whose caller
//! has gone, or whose deadline passed, are removed before inference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, SpawnHandle};
use tracing::{info, warn};

use crate::engine::EngineFactory;
use crate::error::InferError;
use crate::messages::{BatchDone, Enqueue, InferRequest, ReplicaFailed, ReplicaReady, RunBatch};
use crate::model::ModelState;
use crate::observer::BatchObserver;
use crate::queue::{PendingQueue, Readiness};
use crate::replica::Replica;
use crate::repository::ModelSettings;

/// Batches a replica may hold at once: the one running and one waiting, so
/// the engine never idles for a round trip between batches.
const PIPELINE_DEPTH: usize = 2;

/// Lifecycle of a replica as its batcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaState {
    Loading,
    Ready,
    Failed(String),
    /// The memory budget could not hold it; it was never started.
    Refused(String),
}

impl ReplicaState {
    pub fn name(&self) -> &'static str {
        match self {
            ReplicaState::Loading => "loading",
            ReplicaState::Ready => "ready",
            ReplicaState::Failed(_) => "failed",
            ReplicaState::Refused(_) => "refused",
        }
    }
}

struct ReplicaSlot {
    id: usize,
    addr: Option<Addr<Replica>>,
    state: ReplicaState,
    inflight_items: usize,
    inflight_batches: usize,
    processed: u64,
    errors: u64,
    /// Times the replica came back after losing its engine.
    restarts: u64,
}

/// Counters the batcher keeps for stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatcherCounters {
    pub batches: u64,
    pub items: u64,
    /// `batch_sizes[n]` counts the batches of `n` items.
    pub batch_sizes: Vec<u64>,
    pub expired: u64,
    pub cancelled: u64,
    pub rejected: u64,
}

/// One model's batcher.
pub struct Batcher {
    model: String,
    max_batch_size: usize,
    window: Duration,
    queue_capacity: usize,
    state: Arc<ModelState>,
    replicas: Vec<ReplicaSlot>,
    queue: PendingQueue,
    counters: BatcherCounters,
    next_batch_id: u64,
    round_robin: usize,
    wakeup: Option<(Instant, SpawnHandle)>,
    observer: Arc<dyn BatchObserver>,
}

impl Batcher {
    pub fn new(
        model: String,
        settings: &ModelSettings,
        state: Arc<ModelState>,
        observer: Arc<dyn BatchObserver>,
    ) -> Self {
        Batcher {
            model,
            max_batch_size: settings.max_batch_size,
            window: Duration::from_millis(settings.batch_window_ms),
            queue_capacity: settings.queue_capacity,
            state,
            replicas: Vec::new(),
            queue: PendingQueue::default(),
            counters: BatcherCounters::default(),
            next_batch_id: 0,
            round_robin: 0,
            wakeup: None,
            observer,
        }
    }

    /// Items one batch may hold: the model's cap, or 1 for unbatched models.
    fn batch_cap(&self) -> usize {
        match self.state.signature() {
            Some(sig) if !sig.is_batched() => 1,
            _ => self.max_batch_size,
        }
    }

    /// The ready replica that can take a batch and holds the fewest items,
    /// ties broken round-robin.
    fn pick_replica(&self) -> Option<usize> {
        let n = self.replicas.len();
        let mut best: Option<usize> = None;
        for offset in 0..n {
            let index = (self.round_robin + offset) % n;
            let slot = &self.replicas[index];
            if slot.state != ReplicaState::Ready || slot.inflight_batches >= PIPELINE_DEPTH {
                continue;
            }
            if best.is_none_or(|b| slot.inflight_items < self.replicas[b].inflight_items) {
                best = Some(index);
            }
        }
        best
    }

    /// Sends every batch that may leave now and arms a timer for the next.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        let cap = self.batch_cap();
        while let Some(replica) = self.pick_replica() {
            let now = Instant::now();
            let idle = self.replicas[replica].inflight_batches == 0;
            let group = match self.queue.readiness(cap, self.window, now) {
                Readiness::Empty => break,
                Readiness::Due(group) => group,
                Readiness::NotYet(group, _) if idle => group,
                Readiness::NotYet(_, _) => break,
            };
            let entries = self.take_live(group, cap);
            if !entries.is_empty() {
                self.send_batch(replica, entries);
            }
        }
        self.arm_wakeup(ctx, cap);
    }

    fn send_batch(&mut self, replica: usize, entries: Vec<InferRequest>) {
        let items: usize = entries.iter().map(|e| e.items).sum();
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        self.round_robin = (replica + 1) % self.replicas.len();
        let slot = &mut self.replicas[replica];
        let Some(addr) = slot.addr.as_ref() else {
            for entry in entries {
                entry.answer(Err(InferError::Inference("the replica has stopped".into())));
            }
            return;
        };
        for entry in &entries {
            entry.span.in_scope(|| {
                tracing::debug!(model = %self.model, batch_id, batch_size = items, replica = slot.id, "dispatched")
            });
        }
        match addr.try_send(RunBatch { batch_id, entries }) {
            Ok(()) => {
                slot.inflight_items += items;
                slot.inflight_batches += 1;
                self.counters.batches += 1;
                self.counters.items += items as u64;
                if self.counters.batch_sizes.len() <= items {
                    self.counters.batch_sizes.resize(items + 1, 0);
                }
                self.counters.batch_sizes[items] += 1;
            }
            Err(e) => {
                let lost = e.into_inner();
                warn!(model = %self.model, replica = slot.id, "replica mailbox closed; failing its batch");
                slot.state = ReplicaState::Failed("replica thread stopped".into());
                slot.errors += lost.entries.len() as u64;
                for entry in lost.entries {
                    entry.answer(Err(InferError::Inference("the replica stopped".into())));
                }
                self.update_ready_count();
            }
        }
    }

    /// Takes a batch from `group`, leaving out requests whose caller has gone
    /// (counted as cancelled) and answering expired ones 504.
    fn take_live(&mut self, group: usize, cap: usize) -> Vec<InferRequest> {
        let now = Instant::now();
        let mut live = Vec::new();
        for entry in self.queue.take(group, cap) {
            if entry.is_cancelled() {
                self.counters.cancelled += 1;
            } else if entry.deadline <= now {
                self.counters.expired += 1;
                let waited_ms = now.duration_since(entry.enqueued).as_millis() as u64;
                entry.answer(Err(InferError::DeadlineExceeded { waited_ms }));
            } else {
                live.push(entry);
            }
        }
        live
    }

    /// Wakes the batcher when the oldest waiting group falls due.
    fn arm_wakeup(&mut self, ctx: &mut Context<Self>, cap: usize) {
        let due = match self.queue.readiness(cap, self.window, Instant::now()) {
            Readiness::NotYet(_, at) => Some(at),
            // Due but no replica free: a BatchDone will wake us.
            Readiness::Due(_) | Readiness::Empty => None,
        };
        match (due, self.wakeup.as_ref()) {
            (Some(at), Some((armed, _))) if *armed == at => {}
            (due, _) => {
                if let Some((_, handle)) = self.wakeup.take() {
                    ctx.cancel_future(handle);
                }
                if let Some(at) = due {
                    let delay = at.saturating_duration_since(Instant::now());
                    let handle = ctx.run_later(delay, |this, ctx| {
                        this.wakeup = None;
                        this.dispatch(ctx);
                    });
                    self.wakeup = Some((at, handle));
                }
            }
        }
    }

    fn update_ready_count(&self) {
        let ready = self
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .count();
        self.state.set_ready_replicas(ready);
    }

    fn slot_mut(&mut self, id: usize) -> Option<&mut ReplicaSlot> {
        self.replicas.iter_mut().find(|r| r.id == id)
    }

    /// With no replica left that could ever serve, waiting requests fail now
    /// instead of waiting for their deadline.
    fn fail_queue_if_hopeless(&mut self) {
        let hopeful = self
            .replicas
            .iter()
            .any(|r| matches!(r.state, ReplicaState::Ready | ReplicaState::Loading));
        if !hopeful {
            for entry in self.queue.drain_all() {
                entry.answer(Err(InferError::ModelNotReady(self.model.clone())));
            }
        }
    }
}

impl Actor for Batcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.queue_capacity.max(16));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for entry in self.queue.drain_all() {
            entry.answer(Err(InferError::ShuttingDown));
        }
    }
}

impl Handler<Enqueue> for Batcher {
    type Result = ();

    fn handle(&mut self, Enqueue(mut request): Enqueue, ctx: &mut Self::Context) {
        if self.queue.len() >= self.queue_capacity {
            self.counters.rejected += 1;
            request.answer(Err(InferError::QueueFull {
                model: self.model.clone(),
                capacity: self.queue_capacity,
            }));
            return;
        }
        request.enqueued = Instant::now();
        self.queue.push(request);
        self.dispatch(ctx);
    }
}

impl Handler<BatchDone> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: BatchDone, ctx: &mut Self::Context) {
        if let Some(slot) = self.slot_mut(msg.replica) {
            slot.inflight_items = slot.inflight_items.saturating_sub(msg.items);
            slot.inflight_batches = slot.inflight_batches.saturating_sub(1);
            if msg.ok {
                slot.processed += msg.items as u64;
            } else {
                slot.errors += msg.items as u64;
            }
        }
        self.dispatch(ctx);
    }
}

impl Handler<ReplicaReady> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: ReplicaReady, ctx: &mut Self::Context) {
        self.state.set_signature(msg.signature);
        if let Some(slot) = self.slot_mut(msg.replica) {
            if slot.state != ReplicaState::Loading {
                slot.restarts += 1;
            }
            slot.state = ReplicaState::Ready;
        }
        self.update_ready_count();
        self.dispatch(ctx);
    }
}

impl Handler<ReplicaFailed> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: ReplicaFailed, _ctx: &mut Self::Context) {
        if let Some(slot) = self.slot_mut(msg.replica) {
            slot.state = ReplicaState::Failed(msg.error);
            slot.addr = None;
        }
        self.update_ready_count();
        self.fail_queue_if_hopeless();
    }
}

/// Supervisor → batcher: start replica `id` (its memory is reserved), or
/// record that the budget refused it. The batcher starts the replica itself
/// so that the replica's slot exists before the replica can report back.
#[derive(Message)]
#[rtype(result = "()")]
pub enum AttachReplica {
    Start {
        id: usize,
        factory: Arc<dyn EngineFactory>,
        warmup: u32,
    },
    Refused {
        id: usize,
        reason: String,
    },
}

impl Handler<AttachReplica> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: AttachReplica, ctx: &mut Self::Context) {
        let (id, addr, state) = match msg {
            AttachReplica::Start {
                id,
                factory,
                warmup,
            } => {
                let addr = Replica::start(
                    id,
                    self.model.clone(),
                    factory,
                    warmup,
                    ctx.address(),
                    self.observer.clone(),
                );
                (id, Some(addr), ReplicaState::Loading)
            }
            AttachReplica::Refused { id, reason } => (id, None, ReplicaState::Refused(reason)),
        };
        self.replicas.push(ReplicaSlot {
            id,
            addr,
            state,
            inflight_items: 0,
            inflight_batches: 0,
            processed: 0,
            errors: 0,
            restarts: 0,
        });
        self.fail_queue_if_hopeless();
    }
}

/// One replica's view for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSnapshot {
    pub id: usize,
    pub state: ReplicaState,
    pub inflight: usize,
    pub processed: u64,
    pub errors: u64,
    pub restarts: u64,
}

/// A batcher's view for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct BatcherSnapshot {
    pub queue_depth: usize,
    pub max_batch_size: usize,
    pub window_ms: u64,
    pub counters: BatcherCounters,
    pub replicas: Vec<ReplicaSnapshot>,
}

/// Asks a batcher for its snapshot.
#[derive(Message)]
#[rtype(result = "BatcherSnapshot")]
pub struct GetBatcherSnapshot;

impl Handler<GetBatcherSnapshot> for Batcher {
    type Result = actix::MessageResult<GetBatcherSnapshot>;

    fn handle(&mut self, _: GetBatcherSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        actix::MessageResult(BatcherSnapshot {
            queue_depth: self.queue.len(),
            max_batch_size: self.batch_cap(),
            window_ms: self.window.as_millis() as u64,
            counters: self.counters.clone(),
            replicas: self
                .replicas
                .iter()
                .map(|r| ReplicaSnapshot {
                    id: r.id,
                    state: r.state.clone(),
                    inflight: r.inflight_items,
                    processed: r.processed,
                    errors: r.errors,
                    restarts: r.restarts,
                })
                .collect(),
        })
    }
}

/// Stops the batcher: waiting requests are answered `ShuttingDown`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopBatcher;

impl Handler<StopBatcher> for Batcher {
    type Result = ();

    fn handle(&mut self, _: StopBatcher, ctx: &mut Self::Context) {
        info!(model = %self.model, "batcher stopping");
        ctx.stop();
    }
}
