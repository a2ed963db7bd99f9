//! The batcher's replicas: their lifecycle as the batcher sees it (loading,
//! ready, failed, refused, draining), starting and restarting them with
//! backoff, draining them on scale-down and retiring the whole model.
//!
//! Each slot holds its replica's [`Reservation`]: removing the slot gives
//! the memory back, whatever removed it. A refused slot asks the
//! budget again each time room is given back, so a replica refused while
//! another instance was still draining starts once that one has gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a retiring model keeps serving after its queue empties.
const RETIRE_GRACE: Duration = Duration::from_secs(1);

use actix::{ActorContext, Addr, AsyncContext, Context, Handler};
use tracing::{info, warn};

use super::{Batcher, ReplicaState};
use crate::device::{Device, Placement};
use crate::engine::{EngineFactory, LoadTarget};
use crate::inline_run::SharedEngine;
use crate::memory::{BudgetFreed, MemoryBudget, Reservation, Reserve};
use crate::messages::{
    AttachReplica, DrainReplica, ReplicaFailed, ReplicaReady, ReplicaStopped, RetireModel,
};
use crate::model::{BatcherAddr, Residency};
use crate::replica::{Replica, ReplicaReports, ReplicaStart};

pub(super) struct ReplicaSlot {
    pub(super) id: usize,
    pub(super) addr: Option<Addr<Replica>>,
    pub(super) state: ReplicaState,
    pub(super) inflight_items: usize,
    pub(super) inflight_batches: usize,
    pub(super) processed: u64,
    pub(super) errors: u64,
    /// Times the replica came back after losing its engine.
    pub(super) restarts: u64,
    /// How to start it (again, after a failure or a refusal).
    pub(super) factory: Option<Arc<dyn EngineFactory>>,
    /// Its claim on the budget: granted, or refused and waiting for room.
    /// Dropped with the slot, which gives it back.
    pub(super) reservation: Option<Reservation>,
    pub(super) warmup: u32,
    /// Consecutive failed starts, for the restart backoff.
    pub(super) failures: u32,
    /// Consecutive failed batches; at a threshold the engine is reloaded.
    pub(super) failed_batches: u32,
    /// Its thread is loading an engine: memory is in use even if the slot
    /// drains, so the reservation is kept until the thread reports.
    pub(super) loading: bool,
    /// Why its last start or engine failed; cleared once it is ready again.
    pub(super) last_error: Option<String>,
    /// The footprint its engine was measured to hold, once loaded.
    pub(super) measured_mb: Option<u64>,
    /// Its loaded engine maps its weights from a file.
    pub(super) weights_mapped: bool,
    /// When its engine last started loading.
    pub(super) spawned_at: Instant,
    /// Its thread's engine, once it reported ready (workers may run short
    /// requests on it).
    pub(super) engine: Option<Arc<SharedEngine>>,
}

/// True when `slot` was refused for good.
fn reservation_is_permanent(slot: Option<&ReplicaSlot>) -> bool {
    slot.is_some_and(ReplicaSlot::refusal_is_permanent)
}

impl ReplicaSlot {
    /// True when the budget refused it for good (it can never fit).
    pub(super) fn refusal_is_permanent(&self) -> bool {
        self.reservation
            .as_ref()
            .and_then(Reservation::refusal)
            .is_some_and(|r| r.permanent)
    }
}

/// Delay before restarting a replica that failed `failures` times in a row:
/// 1 s doubling, at most 60 s.
fn restart_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

impl Batcher {
    /// Starts replica `id` on the device its `reservation` holds memory on.
    pub(super) fn spawn_replica(
        &self,
        id: usize,
        factory: Arc<dyn EngineFactory>,
        warmup: u32,
        reservation: &Reservation,
        ctx: &mut Context<Self>,
    ) -> Addr<Replica> {
        let target = LoadTarget {
            device: reservation.device().unwrap_or(Device::Cpu),
            memory_mb: reservation.mb(),
            map_weights: self.state.loads_mapped(),
        };
        let plan = ReplicaStart {
            id,
            model: self.model.clone(),
            factory,
            target,
            warmup,
            max_batch_size: self.batch_cap(target.device),
            // A model measured on the CPU reserves what it measured: its
            // later replicas load without measuring (side by side).
            measure: target.device != Device::Cpu || self.state.measured_mb().is_none(),
        };
        let reports = ReplicaReports::new(&ctx.address());
        Replica::start(plan, reports, self.observer.clone())
    }

    /// Restarts replica `id` after its backoff, unless it is being removed.
    pub(super) fn schedule_restart(&mut self, id: usize, ctx: &mut Context<Self>) {
        let Some(slot) = self.replicas.iter_mut().find(|r| r.id == id) else {
            return;
        };
        if slot.factory.is_none() || self.retiring {
            return;
        }
        let delay = restart_backoff(slot.failures);
        slot.failures += 1;
        warn!(model = %self.model, replica = id, delay_ms = delay.as_millis() as u64, "restarting replica after backoff");
        ctx.run_later(delay, move |this, ctx| {
            let Some(slot) = this.replicas.iter().find(|r| r.id == id) else {
                return;
            };
            if !matches!(slot.state, ReplicaState::Failed(_)) || this.retiring {
                return;
            }
            let (Some(factory), Some(reservation)) =
                (slot.factory.clone(), slot.reservation.as_ref())
            else {
                return;
            };
            let addr = this.spawn_replica(id, factory, slot.warmup, reservation, ctx);
            if let Some(slot) = this.replicas.iter_mut().find(|r| r.id == id) {
                slot.addr = Some(addr);
                slot.state = ReplicaState::Loading;
                slot.loading = true;
                slot.restarts += 1;
                slot.spawned_at = Instant::now();
            }
            this.publish_state();
        });
    }

    /// Removes draining replicas that hold nothing any more (their thread
    /// stops when its address is dropped) and gives their reservation back;
    /// a retiring batcher stops once its queue is empty and its replicas gone.
    pub(super) fn finish_drains(&mut self, ctx: &mut Context<Self>) {
        let grace_over = self.retire_after.is_some_and(|at| Instant::now() >= at);
        if self.retiring && grace_over && self.queue.is_empty() {
            for slot in &mut self.replicas {
                slot.state = ReplicaState::Draining;
            }
        }
        let model = self.model.clone();
        // A removed slot without a thread drops its reservation, which gives
        // it back; one with a thread keeps it until the thread has dropped
        // its engine ([`ReplicaStopped`]).
        let mut stopping = Vec::new();
        self.replicas.retain_mut(|slot| {
            let done =
                slot.state == ReplicaState::Draining && slot.inflight_batches == 0 && !slot.loading;
            if done {
                info!(model = %model, replica = slot.id, "replica drained and stopped");
                if let (Some(_), Some(held)) = (slot.addr.take(), slot.reservation.take()) {
                    stopping.push((slot.id, held));
                }
            }
            !done
        });
        self.stopping.extend(stopping);
        self.latency.keep_only(self.replicas.iter().map(|r| r.id));
        self.publish_state();
        let stopped = self.replicas.is_empty() && self.stopping.is_empty();
        if self.retiring && self.queue.is_empty() && stopped {
            info!(model = %self.model, "model retired");
            ctx.stop();
        }
    }

    pub(super) fn slot_mut(&mut self, id: usize) -> Option<&mut ReplicaSlot> {
        self.replicas.iter_mut().find(|r| r.id == id)
    }
}

impl Handler<ReplicaReady> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: ReplicaReady, ctx: &mut Self::Context) {
        self.state.set_signature(self.as_configured(msg.signature));
        self.latency.warmed(msg.replica, &msg.warmup_runs);
        if let Some(slot) = self.slot_mut(msg.replica) {
            slot.loading = false;
            if slot.state == ReplicaState::Draining {
                self.finish_drains(ctx);
                return;
            }
            // A thread whose slot was already given up (failed, restart
            // pending) may still report; only a slot with a thread serves.
            if slot.addr.is_none() {
                return;
            }
            if slot.state != ReplicaState::Loading {
                slot.restarts += 1;
            }
            // A new thread's engine: what ran on the old one stays counted.
            let engine = msg.engine.clone();
            if let Some(old) = slot.engine.replace(engine) {
                if !Arc::ptr_eq(&old, &msg.engine) {
                    slot.processed += old.inline_items();
                }
            }
            match msg.footprint_mb {
                Some(mb) => self.measured(msg.replica, mb),
                // Not measured this time: what replicas of it measured.
                None => {
                    if let Some(mb) = self.state.measured_mb() {
                        self.settle_reservation(msg.replica, mb);
                    }
                }
            }
            let was_resident = self.residency() == Residency::Resident;
            let Some(slot) = self.slot_mut(msg.replica) else {
                return;
            };
            slot.failures = 0;
            slot.last_error = None;
            slot.weights_mapped = msg.weights_mapped;
            slot.state = ReplicaState::Ready;
            let loaded_in = slot.spawned_at.elapsed();
            self.state
                .usage
                .replica_ready(msg.replica, loaded_in, msg.weights_mapped);
            if !was_resident {
                self.note_load_waits();
            }
        }
        self.publish_state();
        self.dispatch(ctx);
    }
}

impl Handler<ReplicaStopped> for Batcher {
    type Result = ();

    /// A drained replica's engine is gone: its reservation goes back.
    fn handle(&mut self, msg: ReplicaStopped, ctx: &mut Self::Context) {
        self.stopping.retain(|(id, _)| *id != msg.replica);
        self.finish_drains(ctx);
    }
}

impl Handler<ReplicaFailed> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: ReplicaFailed, ctx: &mut Self::Context) {
        let Some(slot) = self.slot_mut(msg.replica) else {
            return;
        };
        slot.failed_batches = 0;
        slot.loading = false;
        if slot.state == ReplicaState::Draining {
            slot.addr = None;
            slot.inflight_batches = 0;
        } else {
            slot.last_error = Some(msg.error.clone());
            slot.state = ReplicaState::Failed(msg.error);
            slot.addr = None;
            self.schedule_restart(msg.replica, ctx);
        }
        self.publish_state();
        self.fail_queue_if_hopeless();
        self.finish_drains(ctx);
    }
}

/// What becomes of a replica the budget refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfRefused {
    /// Its slot waits in the batcher for room (an operator's replica).
    Wait,
    /// No slot waits for room: the model stays out of memory until asked
    /// for (startup). One that can never fit keeps its slot, to say why.
    StayCold,
    /// It is not added at all (a replica the supervisor adds only where
    /// there is room now: a scale-up, a repack).
    Skip,
}

/// Asks `budget` for replica `id` of `batcher`'s model and hands the answer
/// to the batcher; false when no slot keeps it (refused with
/// [`IfRefused::StayCold`] while it may fit later, or with
/// [`IfRefused::Skip`]). Whatever happens to the answer on the way, a
/// granted reservation is given back unless a replica slot holds it.
pub async fn reserve_and_attach(
    batcher: BatcherAddr,
    budget: Addr<MemoryBudget>,
    mut attach: AttachReplicaRequest,
) -> bool {
    let reserve = Reserve {
        owner: attach.owner.clone(),
        mb: attach.mb,
        placement: attach.placement,
        configured: attach.configured,
        headroom_mb: attach.headroom_mb,
        waiter: Some(batcher.recipient::<BudgetFreed>()),
    };
    let reservation = match budget.send(reserve).await {
        Ok(reservation) => reservation,
        Err(e) => Reservation::unanswered(
            std::mem::take(&mut attach.owner),
            format!("memory budget unavailable: {e}"),
        ),
    };
    let kept = match attach.if_refused {
        IfRefused::Wait => true,
        IfRefused::StayCold => !reservation.may_fit_later(),
        IfRefused::Skip => reservation.refusal().is_none(),
    };
    if !kept && attach.if_refused == IfRefused::Skip {
        // A refusal holds no memory: nothing to hand over.
        return false;
    }
    let message = AttachReplica {
        id: attach.id,
        factory: attach.factory,
        warmup: attach.warmup,
        reservation,
        retry: attach.retry,
        cold_if_refused: attach.if_refused == IfRefused::StayCold,
    };
    // A full mailbox is only busy: deliver anyway. A closed one (the batcher
    // retired) drops the message and with it the reservation.
    if let Err(actix::dev::SendError::Full(message)) = batcher.try_send(message) {
        batcher.do_send(message);
    }
    kept
}

/// What [`reserve_and_attach`] asks for.
pub struct AttachReplicaRequest {
    pub id: usize,
    /// The budget's name for it, `model/id`.
    pub owner: String,
    pub mb: u64,
    /// Where the model's replicas may run.
    pub placement: Placement,
    pub factory: Arc<dyn EngineFactory>,
    pub warmup: u32,
    pub retry: bool,
    /// What becomes of it when the budget refuses it.
    pub if_refused: IfRefused,
    /// `mb` is model.toml's `memory_mb` (not an estimate or a measurement).
    pub configured: bool,
    /// MB more while it loads, on the CPU only (see
    /// [`ModelState::load_headroom_mb`](crate::model::ModelState::load_headroom_mb)).
    pub headroom_mb: u64,
}

impl Handler<AttachReplica> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: AttachReplica, ctx: &mut Self::Context) {
        let AttachReplica {
            id,
            factory,
            warmup,
            reservation,
            retry,
            cold_if_refused,
        } = msg;
        self.attached = true;
        let drained = self.drained_early.iter().position(|d| *d == id);
        if self.retiring || drained.is_some() {
            if let Some(index) = drained {
                self.drained_early.swap_remove(index);
            }
            drop(reservation);
            self.finish_drains(ctx);
            return;
        }
        if let Some(index) = self.replicas.iter().position(|r| r.id == id) {
            self.retried(index, reservation, ctx);
            return;
        }
        if retry {
            // Drained while it asked again: the reservation goes back.
            return;
        }
        if cold_if_refused && reservation.may_fit_later() {
            // Out of memory until a request asks for it: no slot waits.
            drop(reservation);
            self.publish_state();
            self.dispatch(ctx);
            return;
        }
        let (addr, state) = match reservation.refusal() {
            None => (
                Some(self.spawn_replica(id, factory.clone(), warmup, &reservation, ctx)),
                ReplicaState::Loading,
            ),
            Some(refusal) => (None, ReplicaState::Refused(refusal.reason.clone())),
        };
        let loading = addr.is_some();
        self.replicas.push(ReplicaSlot {
            id,
            addr,
            state,
            inflight_items: 0,
            inflight_batches: 0,
            processed: 0,
            errors: 0,
            restarts: 0,
            factory: Some(factory),
            reservation: Some(reservation),
            warmup,
            failures: 0,
            failed_batches: 0,
            loading,
            last_error: None,
            measured_mb: None,
            weights_mapped: false,
            spawned_at: Instant::now(),
            engine: None,
        });
        let permanent = reservation_is_permanent(self.replicas.last());
        if !loading && !permanent {
            // Room may have been given back between the budget refusing this
            // slot and the slot being recorded here: its BudgetFreed then
            // found no slot. Asking once more closes that gap; a refusal now
            // is recorded, and the next room given back asks again.
            let owner = self
                .replicas
                .last()
                .and_then(|slot| slot.reservation.as_ref().map(|r| r.owner().to_string()));
            if let Some(owner) = owner {
                self.ask_again(owner, ctx);
            }
        }
        self.publish_state();
        self.fail_queue_if_hopeless();
    }
}

impl Batcher {
    /// The budget's answer to a refused slot that asked again: granted, the
    /// replica starts; refused, the slot keeps waiting with the new reason.
    fn retried(&mut self, index: usize, reservation: Reservation, ctx: &mut Context<Self>) {
        let slot = &mut self.replicas[index];
        let ReplicaState::Refused(_) = slot.state else {
            // Not a refused slot: it already holds the claim for this owner,
            // which giving this one back would release.
            if let Some(held) = slot.reservation.take() {
                slot.reservation = Some(held.replaces(reservation));
            }
            return;
        };
        let refusal = reservation.refusal().map(|r| r.reason.clone());
        slot.reservation = Some(match slot.reservation.take() {
            Some(older) => reservation.replaces(older),
            None => reservation,
        });
        if let Some(reason) = refusal {
            slot.state = ReplicaState::Refused(reason);
            return;
        }
        let (id, warmup) = (slot.id, slot.warmup);
        let slot = &self.replicas[index];
        let (Some(factory), Some(reservation)) = (slot.factory.clone(), slot.reservation.as_ref())
        else {
            return;
        };
        info!(model = %self.model, replica = id, "the budget has room again; starting the refused replica");
        let addr = self.spawn_replica(id, factory, warmup, reservation, ctx);
        let slot = &mut self.replicas[index];
        slot.addr = Some(addr);
        slot.state = ReplicaState::Loading;
        slot.loading = true;
        slot.spawned_at = Instant::now();
        self.publish_state();
    }
}

impl Handler<BudgetFreed> for Batcher {
    type Result = ();

    /// Room was given back: a refused slot asks again.
    fn handle(&mut self, msg: BudgetFreed, ctx: &mut Self::Context) {
        self.ask_again(msg.owner, ctx);
    }
}

impl Batcher {
    /// The refused slot whose reservation `owner` names asks the budget
    /// again; its answer comes back as a retried [`AttachReplica`].
    pub(super) fn ask_again(&mut self, owner: String, ctx: &mut Context<Self>) {
        let (Some(budget), false) = (self.budget.clone(), self.retiring) else {
            return;
        };
        let Some(slot) = self.replicas.iter().find(|slot| {
            matches!(slot.state, ReplicaState::Refused(_))
                && slot.reservation.as_ref().map(Reservation::owner) == Some(owner.as_str())
        }) else {
            return;
        };
        let Some(factory) = slot.factory.clone() else {
            return;
        };
        // Measured by now, or other models' measurements make the bid; on
        // the CPU a load holds the file besides, unless it maps it.
        let headroom = self.state.headroom_for(self.file_mb);
        let (mb, headroom_mb) = match (self.memory_configured, self.state.measured_mb()) {
            (false, Some(measured)) => (measured, headroom),
            (false, None) => (
                self.state.opening_bid(self.file_mb, self.footprint_mb),
                headroom,
            ),
            (true, _) => (self.footprint_mb, 0),
        };
        let request = AttachReplicaRequest {
            id: slot.id,
            owner,
            mb,
            headroom_mb,
            placement: self.placement.clone(),
            factory,
            warmup: slot.warmup,
            retry: true,
            if_refused: IfRefused::Wait,
            configured: self.memory_configured,
        };
        let batcher = BatcherAddr::new(&ctx.address());
        actix::spawn(reserve_and_attach(batcher, budget, request));
    }
}

impl Handler<DrainReplica> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: DrainReplica, ctx: &mut Self::Context) {
        if self.slot_mut(msg.id).is_none() {
            self.drained_early.push(msg.id);
        }
        if let Some(slot) = self.slot_mut(msg.id) {
            if matches!(
                slot.state,
                ReplicaState::Refused(_) | ReplicaState::Failed(_)
            ) {
                slot.inflight_batches = 0;
            }
            slot.state = ReplicaState::Draining;
        }
        self.finish_drains(ctx);
        self.dispatch(ctx);
    }
}

impl Handler<RetireModel> for Batcher {
    type Result = ();

    fn handle(&mut self, _: RetireModel, ctx: &mut Self::Context) {
        info!(model = %self.model, "retiring model");
        self.retiring = true;
        self.publish_inline();
        self.retire_after = Some(Instant::now() + RETIRE_GRACE);
        ctx.run_later(RETIRE_GRACE, |this, ctx| this.finish_drains(ctx));
        self.fail_queue_if_hopeless();
        self.replicas
            .retain(|r| !matches!(r.state, ReplicaState::Refused(_)));
        self.finish_drains(ctx);
    }
}
