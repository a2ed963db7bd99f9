//! A batcher whose model is out of memory: requests wait in its queue while
//! the supervisor brings a replica in (making room when the budget is
//! full), each until its own deadline; the model's residency and use are
//! published for health, stats and the supervisor's decisions.
//!
//! While requests wait and no replica is ready or loading, the batcher
//! asks the supervisor for the model every [`LOAD_TICK`], asks the budget
//! again for any replica it refused, and answers requests whose deadline
//! passed (504, "waiting for the model to load"). Requests fail at once
//! (503 with the reason) only when the model cannot load at all: its
//! replicas fail, it can never fit, or it was scaled to 0 replicas.

use std::time::{Duration, Instant};

use actix::{AsyncContext, Context};

use super::{Batcher, ReplicaState};
use crate::error::InferError;
use crate::messages::ModelDemanded;
use crate::model::Residency;

/// How often a batcher (or a request for a model that never loaded) with
/// requests waiting for a load asks again.
pub const LOAD_TICK: Duration = Duration::from_millis(100);

impl Batcher {
    /// True when a replica is ready or loading.
    fn has_live_replica(&self) -> bool {
        self.replicas
            .iter()
            .any(|r| matches!(r.state, ReplicaState::Ready | ReplicaState::Loading))
    }

    /// Why the model cannot load, when it cannot: a replica failed (and
    /// none is ready or loading), one can never fit, or the operator
    /// scaled it to 0 replicas.
    fn cannot_load(&self) -> Option<String> {
        if self.has_live_replica() {
            return None;
        }
        let failure = self.replicas.iter().find_map(|r| match &r.state {
            ReplicaState::Failed(why) => Some(why.clone()),
            ReplicaState::Refused(why) if r.refusal_is_permanent() => Some(why.clone()),
            _ => None,
        });
        if failure.is_some() {
            return failure;
        }
        if self.supervisor.is_some() && self.state.desired_replicas() == 0 {
            return Some("it is scaled to 0 replicas".into());
        }
        None
    }

    /// The model's residency as its replicas show it.
    pub(super) fn residency(&self) -> Residency {
        let any = |state: ReplicaState| self.replicas.iter().any(|r| r.state == state);
        if any(ReplicaState::Ready) {
            return Residency::Resident;
        }
        if any(ReplicaState::Loading) {
            return Residency::Loading;
        }
        if let Some(reason) = self.cannot_load() {
            return Residency::Failed(reason);
        }
        if !self.attached {
            return Residency::Starting;
        }
        Residency::Cold
    }

    /// With no replica that could ever serve, waiting requests fail now
    /// instead of waiting for their deadline: the model is retiring, or it
    /// cannot load (see [`Batcher::cannot_load`]). A model that is only out
    /// of memory keeps them: they wait for it to load.
    pub(super) fn fail_queue_if_hopeless(&mut self) {
        let reason = if self.retiring || self.supervisor.is_none() {
            // Nobody brings a replica in any more: only those there serve.
            if self.has_live_replica() {
                return;
            }
            self.cannot_load()
        } else {
            match self.cannot_load() {
                None => return,
                reason => reason,
            }
        };
        let error = match reason {
            Some(reason) => InferError::ModelUnavailable {
                model: self.model.clone(),
                reason,
            },
            None => InferError::ModelNotReady(self.model.clone()),
        };
        for entry in self.queue.drain_all() {
            entry.answer(Err(error.clone()));
        }
        self.publish_predictions();
    }

    /// Requests wait and nothing is ready or loading: asks the supervisor
    /// for the model and the budget again for refused replicas, answers
    /// requests whose deadline passed, and comes back in [`LOAD_TICK`]
    /// while that lasts.
    pub(super) fn await_load(&mut self, ctx: &mut Context<Self>) {
        if self.queue.is_empty() || self.has_live_replica() || self.retiring {
            return;
        }
        self.expire_waiting();
        if self.queue.is_empty() {
            return;
        }
        if let Some(supervisor) = &self.supervisor {
            supervisor.do_send(ModelDemanded {
                model: self.model.clone(),
                state: self.state.clone(),
            });
        }
        let refused: Vec<String> = self
            .replicas
            .iter()
            .filter(|r| matches!(r.state, ReplicaState::Refused(_)) && !r.refusal_is_permanent())
            .filter_map(|r| r.reservation.as_ref().map(|held| held.owner().to_string()))
            .collect();
        for owner in refused {
            self.ask_again(owner, ctx);
        }
        if self.load_tick.is_none() {
            self.load_tick = Some(ctx.run_later(LOAD_TICK, |this, ctx| {
                this.load_tick = None;
                this.await_load(ctx);
            }));
        }
    }

    /// Answers the waiting requests whose deadline passed (504) and drops
    /// those whose caller left.
    fn expire_waiting(&mut self) {
        let now = Instant::now();
        for entry in self
            .queue
            .remove_where(|e| e.deadline <= now || e.is_cancelled())
        {
            if entry.is_cancelled() {
                self.counters.cancelled += 1;
                continue;
            }
            self.counters.expired += 1;
            let waited_ms = now.duration_since(entry.enqueued).as_millis() as u64;
            entry.answer(Err(InferError::LoadTimedOut {
                model: self.model.clone(),
                waited_ms,
            }));
        }
    }

    /// The model just became resident: tells the observer how long each
    /// waiting request waited for the load.
    pub(super) fn note_load_waits(&mut self) {
        let now = Instant::now();
        let mut waits = Vec::new();
        self.queue.remove_where(|e| {
            waits.push(now.duration_since(e.enqueued));
            false
        });
        for waited in waits {
            self.observer.load_waited(&self.model, waited);
        }
    }

    /// Publishes the ready count, residency and work held, for the
    /// service (readiness) and the supervisor (residency decisions).
    pub(super) fn publish_state(&self) {
        let ready = self.ready_ids();
        self.state.set_ready_replicas(ready.len());
        let loading = self
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Loading)
            .count();
        self.state.set_loading_replicas(loading);
        self.state.usage.retain_ready(&ready);
        self.state.set_residency(self.residency());
        self.publish_inline();
        self.note_work();
    }

    /// Publishes the work queued and running.
    pub(super) fn note_work(&self) {
        let inflight = self.replicas.iter().map(|r| r.inflight_items).sum();
        self.state.usage.set_work(self.queue.len(), inflight);
        self.note_inline_open();
    }
}
