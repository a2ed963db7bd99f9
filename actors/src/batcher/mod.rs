//! The batcher of one model: it queues requests, forms batches and sends each
//! to the replica with the fewest items in flight (ties round-robin).
//!
//! A batch leaves when it is full (`max_batch_size` items), when its oldest
//! request has waited `batch_window_ms`, or at once when a replica is idle, so
//! a lone request at low load does not wait the window. Requests whose caller
//! has gone, or whose deadline passed, are removed before inference.
//!
//! The cap on items per batch is `max_batch_size`, lowered to what the free
//! memory budget of the replica's device holds when the memory one item
//! needs is known
//! (`memory_per_item_mb`, or measured by warmup), and lowered for a while
//! after a batch ran out of memory to the largest size that then ran
//! (`memory_cap`). With a latency target, the cap and window are cut to
//! it and requests predicted to finish late are refused on arrival
//! (`latency`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Recipient, SpawnHandle, WrapFuture,
};
use tracing::warn;

use crate::device::Device;
use crate::error::InferError;
use crate::memory::{FreeMemory, MemoryBudget, Reservation, ShareFreeMemory};
use crate::messages::{
    BatchDone, Enqueue, InferRequest, ModelDemanded, ReloadEngine, ReplicaFailed, RunBatch,
};
use crate::model::ModelState;
use crate::observer::BatchObserver;
use crate::queue::{PendingQueue, Readiness};
use crate::repository::ModelSettings;
use crate::signature::ModelSignature;

mod footprint;
mod inline;
mod latency;
mod memory_cap;
mod replicas;
mod residency;
mod snapshot;

pub use residency::LOAD_TICK;

use replicas::ReplicaSlot;
pub use replicas::{reserve_and_attach, AttachReplicaRequest, IfRefused};
// What a batcher answers for stats is declared with its messages; it is
// named here too, where its readers look for it.
pub use crate::messages::{
    BatcherCounters, BatcherSnapshot, CapReason, GetBatcherSnapshot, ReplicaSnapshot, ReplicaState,
};

/// Batches a replica may hold at once: the one running and one waiting, so
/// the engine never idles for a round trip between batches.
const PIPELINE_DEPTH: usize = 2;

/// Failed batches in a row after which a replica's engine is reloaded.
const RELOAD_AFTER_FAILED_BATCHES: u32 = 3;

/// How long the cap stays lowered after a batch ran out of memory.
const OUT_OF_MEMORY_HOLD: Duration = Duration::from_secs(30);

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
    /// Where refused replicas ask again for a reservation.
    budget: Option<Addr<MemoryBudget>>,
    /// What each replica reserves, in MB.
    footprint_mb: u64,
    /// The model file's MB: the least a measured footprint can be.
    file_mb: u64,
    /// Where its replicas may run (`device`, `gpus`).
    placement: crate::device::Placement,
    /// Set when the model is being removed: stop once the queue is empty.
    retiring: bool,
    /// A retiring batcher keeps its replicas serving until this instant,
    /// so requests that took its handle just before a swap still run.
    retire_after: Option<Instant>,
    /// Replicas drained before the supervisor's `AttachReplica` for them
    /// arrived: when it does, its reservation is dropped (given back) at once.
    drained_early: Vec<usize>,
    me: Option<Addr<Batcher>>,
    /// MB one item of a batch needs: `memory_per_item_mb`, else what warmup
    /// measured, else unknown.
    memory_per_item_mb: Option<u64>,
    memory_per_item_configured: bool,
    /// `memory_mb` in model.toml sets the footprint: measurements are
    /// shown, never applied.
    memory_configured: bool,
    /// The memory budget's free MB per device, kept current by the budget.
    free_memory: Option<FreeMemory>,
    /// After running out of memory: the lowered cap, and until when.
    out_of_memory_cap: Option<(usize, Instant)>,
    /// Where it asks for its model to be brought into memory; `None`
    /// outside a supervisor (only the replicas attached to it serve).
    supervisor: Option<Recipient<ModelDemanded>>,
    /// Told about its replicas at least once (they started, or the model
    /// did not fit and stays out of memory until asked for).
    attached: bool,
    /// Armed while requests wait for the model to load.
    load_tick: Option<SpawnHandle>,
    /// Reservations of drained replicas whose thread has not yet dropped
    /// its engine, by replica id: given back on [`ReplicaStopped`].
    stopping: Vec<(usize, Reservation)>,
    /// The latency target's batch sizes and admission.
    latency: latency::LatencyControl,
    /// The model's configuration says it takes no batch dimension.
    unbatched: bool,
    /// What its lane for short runs was last told.
    inline_published: std::cell::RefCell<inline::InlinePublished>,
}

impl Batcher {
    /// A replica's signature as the model's configuration has it (an
    /// unbatched model's whatever its shapes).
    fn as_configured(&self, mut signature: ModelSignature) -> ModelSignature {
        signature.unbatched |= self.unbatched;
        signature
    }

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
            queue: PendingQueue::new(Duration::from_millis(settings.max_priority_wait_ms)),
            counters: BatcherCounters::default(),
            next_batch_id: 0,
            round_robin: 0,
            wakeup: None,
            observer,
            budget: None,
            footprint_mb: 0,
            file_mb: 0,
            placement: settings.placement(),
            retiring: false,
            retire_after: None,
            drained_early: Vec::new(),
            me: None,
            memory_per_item_mb: settings.memory_per_item_mb,
            memory_per_item_configured: settings.memory_per_item_mb.is_some(),
            memory_configured: settings.memory_mb.is_some(),
            free_memory: None,
            out_of_memory_cap: None,
            supervisor: None,
            attached: false,
            load_tick: None,
            stopping: Vec::new(),
            latency: latency::LatencyControl::new(settings.latency_target_ms),
            unbatched: settings.unbatched,
            inline_published: Default::default(),
        }
    }

    /// Requests for the model while none of its replicas is in memory ask
    /// `supervisor` to load it, and wait for it.
    pub fn with_supervisor(mut self, supervisor: Recipient<ModelDemanded>) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    /// Asks the memory budget, once, for its shared free MB, so that
    /// batches can be capped at what memory holds without a message each.
    fn share_free_memory(&self, ctx: &mut Context<Self>) {
        let Some(budget) = self.budget.clone() else {
            return;
        };
        let ask = async move { budget.send(ShareFreeMemory).await };
        ctx.spawn(ask.into_actor(self).map(|answer, this, _| match answer {
            Ok(free) => this.free_memory = Some(free),
            Err(e) => warn!(model = %this.model, error = %e, "memory budget did not share its free memory"),
        }));
    }

    /// Refused replicas of `memory_mb` each ask `budget` again when it
    /// has room; batches are capped at what its free memory holds.
    /// Replicas reserve `memory_mb` each from `budget`; a loaded replica
    /// holds at least `file_mb` (its model file), whatever it measures.
    pub fn with_budget(mut self, budget: Addr<MemoryBudget>, memory_mb: u64, file_mb: u64) -> Self {
        self.budget = Some(budget);
        self.footprint_mb = memory_mb;
        self.file_mb = file_mb;
        self
    }

    /// Items one batch for a replica on `device` may hold: the model's cap,
    /// or 1 for unbatched models.
    fn batch_cap(&self, device: Device) -> usize {
        self.cap_at(device, Instant::now()).0
    }

    /// The device replica `index` runs on (the CPU until it has one).
    fn device_of(&self, index: usize) -> Device {
        self.replicas[index]
            .reservation
            .as_ref()
            .and_then(Reservation::device)
            .unwrap_or(Device::Cpu)
    }

    /// The batch cap now and what set it, on the device of the first ready
    /// replica (for stats).
    fn cap(&self) -> (usize, CapReason) {
        let device = self
            .ready_index()
            .map_or(Device::Cpu, |index| self.device_of(index));
        self.cap_at(device, Instant::now())
    }

    /// The first ready replica's index.
    fn ready_index(&self) -> Option<usize> {
        self.replicas
            .iter()
            .position(|r| r.state == ReplicaState::Ready)
    }

    /// The batch cap on `device` and what set it: `max_batch_size`, lowered
    /// to what the device's free memory holds (when the memory per item is
    /// known) and, for a while after running out of memory, to the largest
    /// size that ran. Never below 1.
    fn cap_at(&self, device: Device, now: Instant) -> (usize, CapReason) {
        if self.state.signature().is_some_and(|sig| !sig.is_batched()) {
            return (1, CapReason::Unbatched);
        }
        let mut cap = (self.max_batch_size.max(1), CapReason::MaxBatchSize);
        let free = self.free_memory.as_ref().and_then(|f| f.free_mb(device));
        if let (Some(per_item), Some(free)) = (self.memory_per_item_mb, free) {
            let fits = free / per_item.max(1);
            let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(1);
            if fits < cap.0 {
                cap = (fits, CapReason::MemoryBudget);
            }
        }
        if let Some((limit, until)) = self.out_of_memory_cap {
            if now < until && limit < cap.0 {
                cap = (limit.max(1), CapReason::OutOfMemory);
            }
        }
        cap
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
    /// Requests pinned to a replica (a sequence's) go only to it while it is
    /// ready, to any replica once it is not.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        while let Some(first) = self.pick_replica() {
            let candidates = if self.queue.has_pins() {
                self.ready_by_load(first)
            } else {
                vec![first]
            };
            let mut sent = false;
            for replica in candidates {
                if let Some(entries) = self.batch_for(replica) {
                    if !entries.is_empty() {
                        self.send_batch(replica, entries);
                    }
                    sent = true;
                    break;
                }
            }
            if !sent {
                break;
            }
        }
        let first_ready = self.ready_index().unwrap_or(0);
        let (cap, window) = self.limits(first_ready);
        self.arm_wakeup(ctx, cap, window);
        self.note_work();
        self.publish_predictions();
        self.await_load(ctx);
    }

    /// The batch replica `index` should run now, if one may leave.
    fn batch_for(&mut self, index: usize) -> Option<Vec<InferRequest>> {
        let (cap, window) = self.limits(index);
        let now = Instant::now();
        let slot = &self.replicas[index];
        let idle = slot.inflight_batches == 0;
        let id = slot.id;
        let ready = self.ready_ids();
        let allowed = |pin: Option<usize>| pin.is_none_or(|p| p == id || !ready.contains(&p));
        let group = match self.queue.readiness_for(cap, window, now, allowed) {
            Readiness::Empty => return None,
            Readiness::Due(group) => group,
            Readiness::NotYet(group, _) if idle => group,
            Readiness::NotYet(_, _) => return None,
        };
        Some(self.take_live(group, cap))
    }

    /// The ids of the ready replicas.
    fn ready_ids(&self) -> Vec<usize> {
        self.replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .map(|r| r.id)
            .collect()
    }

    /// Ready replicas that can take a batch, `first` (the least loaded)
    /// first, then by load.
    fn ready_by_load(&self, first: usize) -> Vec<usize> {
        let mut others: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| {
                let slot = &self.replicas[i];
                i != first
                    && slot.state == ReplicaState::Ready
                    && slot.inflight_batches < PIPELINE_DEPTH
            })
            .collect();
        others.sort_by_key(|&i| self.replicas[i].inflight_items);
        std::iter::once(first).chain(others).collect()
    }

    fn send_batch(&mut self, replica: usize, mut entries: Vec<InferRequest>) {
        for entry in &mut entries {
            // The wait ends here: its span closes.
            entry.waiting = tracing::Span::none();
        }
        let items: usize = entries.iter().map(|e| e.items).sum();
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        self.round_robin = (replica + 1) % self.replicas.len();
        let slot = &mut self.replicas[replica];
        let Some(addr) = slot.addr.as_ref() else {
            for entry in entries {
                entry.answer(Err(InferError::Inference("the replica has stopped".into())));
            }
            if let Some(me) = &self.me {
                me.do_send(ReplicaFailed {
                    replica: slot.id,
                    error: "the replica has no thread".into(),
                });
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
                if slot.inflight_batches == 0 {
                    self.latency.started(slot.id, Instant::now());
                }
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
                slot.addr = None;
                // Its thread is gone: nothing it held will ever report, and
                // a drain must not wait for it.
                slot.inflight_items = 0;
                slot.inflight_batches = 0;
                if let Some(me) = &self.me {
                    me.do_send(ReplicaFailed {
                        replica: slot.id,
                        error: "replica thread stopped".into(),
                    });
                }
                slot.errors += lost.entries.iter().map(|e| e.items as u64).sum::<u64>();
                for entry in lost.entries {
                    entry.answer(Err(InferError::Inference("the replica stopped".into())));
                }
                self.publish_state();
            }
        }
    }

    /// Takes a batch from `group`, most urgent requests first. Dead requests
    /// take no room in it: expired ones (deadline passed, whether or not the
    /// caller still waits) are answered 504 and counted as expired, those
    /// whose caller has gone are counted as cancelled.
    fn take_live(&mut self, group: usize, cap: usize) -> Vec<InferRequest> {
        let now = Instant::now();
        let taken = self.queue.take(group, cap, now, |entry| {
            entry.deadline <= now || entry.is_cancelled()
        });
        for entry in taken.dead {
            if entry.deadline <= now {
                self.counters.expired += 1;
                let waited_ms = now.duration_since(entry.enqueued).as_millis() as u64;
                entry.answer(Err(InferError::DeadlineExceeded { waited_ms }));
            } else {
                self.counters.cancelled += 1;
            }
        }
        taken.live
    }

    /// Wakes the batcher when the oldest waiting group falls due.
    fn arm_wakeup(&mut self, ctx: &mut Context<Self>, cap: usize, window: Duration) {
        let due = match self.queue.readiness(cap, window, Instant::now()) {
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
}

impl Actor for Batcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.queue_capacity.max(16));
        self.me = Some(ctx.address());
        self.state.inline.connect(
            &self.model,
            self.observer.clone(),
            ctx.address().recipient(),
        );
        self.share_free_memory(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for entry in self.queue.drain_all() {
            entry.answer(Err(InferError::ShuttingDown));
        }
        self.publish_predictions();
    }
}

impl Handler<Enqueue> for Batcher {
    type Result = ();

    fn handle(&mut self, Enqueue(request): Enqueue, ctx: &mut Self::Context) {
        if self.queue.len() >= self.queue_capacity {
            // Requests whose caller left or whose deadline passed give their
            // place up before anyone is refused.
            let now = Instant::now();
            for entry in self
                .queue
                .remove_where(|e| e.is_cancelled() || e.deadline <= now)
            {
                if entry.is_cancelled() {
                    self.counters.cancelled += 1;
                } else {
                    self.counters.expired += 1;
                    let waited_ms = now.duration_since(entry.enqueued).as_millis() as u64;
                    entry.answer(Err(InferError::DeadlineExceeded { waited_ms }));
                }
            }
        }
        if self.queue.len() >= self.queue_capacity {
            self.counters.rejected += 1;
            request.answer(Err(InferError::QueueFull {
                model: self.model.clone(),
                capacity: self.queue_capacity,
            }));
            self.publish_predictions();
            return;
        }
        let Some(mut request) = self.admit(request) else {
            return;
        };
        request.enqueued = Instant::now();
        request.waiting = tracing::info_span!(parent: &request.span, "queue", model = %self.model);
        self.queue.push(request);
        self.state.usage.requested();
        self.dispatch(ctx);
        if self.retiring {
            self.fail_queue_if_hopeless();
            self.finish_drains(ctx);
        }
    }
}

impl Handler<BatchDone> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: BatchDone, ctx: &mut Self::Context) {
        let mut reloading = false;
        let state = self.state.clone();
        let mut more = false;
        if let Some(slot) = self.slot_mut(msg.replica) {
            slot.inflight_items = slot.inflight_items.saturating_sub(msg.items);
            slot.inflight_batches = slot.inflight_batches.saturating_sub(1);
            more = slot.inflight_batches > 0;
            let ran = (msg.items - msg.failed_items.min(msg.items)) as u64;
            slot.processed += ran;
            state.usage.ran(ran);
            slot.errors += msg.failed_items as u64;
            if msg.failed_items == 0 {
                slot.failed_batches = 0;
            } else {
                if msg.engine_fault {
                    slot.failed_batches += 1;
                }
                let serving = slot.state == ReplicaState::Ready && slot.addr.is_some();
                if serving && slot.failed_batches >= RELOAD_AFTER_FAILED_BATCHES {
                    if let Some(addr) = &slot.addr {
                        addr.do_send(ReloadEngine);
                    }
                    slot.state = ReplicaState::Loading;
                    slot.loading = true;
                    slot.failed_batches = 0;
                    slot.restarts += 1;
                    reloading = true;
                }
            }
        }
        self.latency
            .ran(msg.replica, msg.items, msg.took, Instant::now(), more);
        if reloading {
            warn!(model = %self.model, replica = msg.replica, "replica keeps failing; reloading its engine");
            self.publish_state();
        } else {
            self.publish_inline();
        }
        self.dispatch(ctx);
        self.finish_drains(ctx);
    }
}

#[cfg(test)]
mod tests;
