//! The batcher's replicas: their lifecycle as the batcher sees it (loading,
//! ready, failed, refused, draining), starting and restarting them with
//! backoff, draining them on scale-down and retiring the whole model.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a retiring model keeps serving after its queue empties.
const RETIRE_GRACE: Duration = Duration::from_secs(1);

use actix::{ActorContext, Addr, AsyncContext, Context, Handler, Message};
use tracing::{info, warn};

use super::Batcher;
use crate::engine::EngineFactory;
use crate::error::InferError;
use crate::memory::Release;
use crate::messages::{ReplicaFailed, ReplicaReady};
use crate::replica::Replica;

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
    /// How to start it again after a failure (`None` for refused slots).
    pub(super) factory: Option<Arc<dyn EngineFactory>>,
    pub(super) warmup: u32,
    /// Consecutive failed starts, for the restart backoff.
    pub(super) failures: u32,
    /// Consecutive failed batches; at a threshold the engine is reloaded.
    pub(super) failed_batches: u32,
    /// Its thread is loading an engine: memory is in use even if the slot
    /// drains, so the reservation is kept until the thread reports.
    pub(super) loading: bool,
}

/// Delay before restarting a replica that failed `failures` times in a row:
/// 1 s doubling, at most 60 s.
fn restart_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

impl Batcher {
    pub(super) fn spawn_replica(
        &self,
        id: usize,
        factory: Arc<dyn EngineFactory>,
        warmup: u32,
        ctx: &mut Context<Self>,
    ) -> Addr<Replica> {
        Replica::start(
            id,
            self.model.clone(),
            factory,
            warmup,
            ctx.address(),
            self.observer.clone(),
            self.batch_cap(),
        )
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
            let Some(factory) = slot.factory.clone() else {
                return;
            };
            let warmup = slot.warmup;
            let addr = this.spawn_replica(id, factory, warmup, ctx);
            if let Some(slot) = this.replicas.iter_mut().find(|r| r.id == id) {
                slot.addr = Some(addr);
                slot.state = ReplicaState::Loading;
                slot.loading = true;
                slot.restarts += 1;
            }
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
        let budget = self.budget.clone();
        self.replicas.retain(|slot| {
            let done =
                slot.state == ReplicaState::Draining && slot.inflight_batches == 0 && !slot.loading;
            if done {
                info!(model = %model, replica = slot.id, "replica drained and stopped");
                if let Some(budget) = &budget {
                    budget.do_send(Release {
                        owner: format!("{model}/{}", slot.id),
                    });
                }
            }
            !done
        });
        self.update_ready_count();
        if self.retiring && self.queue.is_empty() && self.replicas.is_empty() {
            info!(model = %self.model, "model retired");
            ctx.stop();
        }
    }

    pub(super) fn update_ready_count(&self) {
        let ready = self
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .count();
        self.state.set_ready_replicas(ready);
    }

    pub(super) fn slot_mut(&mut self, id: usize) -> Option<&mut ReplicaSlot> {
        self.replicas.iter_mut().find(|r| r.id == id)
    }

    /// With no replica left that could ever serve, waiting requests fail now
    /// instead of waiting for their deadline.
    pub(super) fn fail_queue_if_hopeless(&mut self) {
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

impl Handler<ReplicaReady> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: ReplicaReady, ctx: &mut Self::Context) {
        self.state.set_signature(msg.signature);
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
            slot.failures = 0;
            slot.state = ReplicaState::Ready;
        }
        self.update_ready_count();
        self.dispatch(ctx);
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
            slot.state = ReplicaState::Failed(msg.error);
            slot.addr = None;
            self.schedule_restart(msg.replica, ctx);
        }
        self.update_ready_count();
        self.fail_queue_if_hopeless();
        self.finish_drains(ctx);
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
        let id = match &msg {
            AttachReplica::Start { id, .. } | AttachReplica::Refused { id, .. } => *id,
        };
        let drained = self.drained_early.iter().position(|d| *d == id);
        if self.retiring || drained.is_some() {
            if let Some(index) = drained {
                self.drained_early.swap_remove(index);
            }
            if let Some(budget) = &self.budget {
                budget.do_send(Release {
                    owner: format!("{}/{id}", self.model),
                });
            }
            self.finish_drains(ctx);
            return;
        }
        let (id, addr, state, factory, warmup) = match msg {
            AttachReplica::Start {
                id,
                factory,
                warmup,
            } => {
                let addr = self.spawn_replica(id, factory.clone(), warmup, ctx);
                (id, Some(addr), ReplicaState::Loading, Some(factory), warmup)
            }
            AttachReplica::Refused { id, reason } => {
                (id, None, ReplicaState::Refused(reason), None, 0)
            }
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
            factory,
            warmup,
            failures: 0,
            failed_batches: 0,
            loading,
        });
        self.fail_queue_if_hopeless();
    }
}

/// Supervisor → batcher: remove replica `id` once it has finished what it
/// holds (scale-down). A refused replica goes at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainReplica {
    pub id: usize,
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

/// Supervisor → batcher: the model is being removed. Requests already queued
/// are still served; then every replica drains and the batcher stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetireModel;

impl Handler<RetireModel> for Batcher {
    type Result = ();

    fn handle(&mut self, _: RetireModel, ctx: &mut Self::Context) {
        info!(model = %self.model, "retiring model");
        self.retiring = true;
        self.retire_after = Some(Instant::now() + RETIRE_GRACE);
        ctx.run_later(RETIRE_GRACE, |this, ctx| this.finish_drains(ctx));
        self.fail_queue_if_hopeless();
        self.replicas
            .retain(|r| !matches!(r.state, ReplicaState::Refused(_)));
        self.finish_drains(ctx);
    }
}
