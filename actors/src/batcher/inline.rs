//! The batcher's side of the lane for short runs (see
//! [`crate::inline_run`]): which of its engines workers may run requests
//! on, the largest request predicted to run there within the threshold,
//! and whether the lane is open (nothing waits in the queue and the model
//! is not retiring).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Handler;

use super::replicas::ReplicaSlot;
use super::{Batcher, ReplicaState};
use crate::inline_run::{self, SharedEngine, MAX_INLINE_ITEMS};
use crate::messages::{InlineRunPanicked, ReplicaFailed};

/// How often, at most, the largest request is worked out again from the
/// run profiles while the ready replicas stay the same (it is worked out
/// after batches, which can come thousands of times a second).
const RECOMPUTE_EVERY: Duration = Duration::from_millis(100);

/// What the batcher last published to its lane: the replicas (id and
/// engine: a restarted replica keeps its id) and the largest request, and
/// when.
#[derive(Debug, Default)]
pub(super) struct InlinePublished {
    replicas: Vec<(usize, *const SharedEngine)>,
    max_items: usize,
    at: Option<Instant>,
}

/// The engine of `slot` while it serves: ready, with its thread.
fn serving_engine(slot: &ReplicaSlot) -> Option<&Arc<SharedEngine>> {
    let serving = slot.state == ReplicaState::Ready && slot.addr.is_some();
    slot.engine.as_ref().filter(|_| serving)
}

impl Batcher {
    /// Publishes the ready replicas' engines and the largest request they
    /// run within the threshold, when either changed; a batch that ran
    /// reopens a lane a slow run closed.
    pub(super) fn publish_inline(&self) {
        let lane = &self.state.inline;
        let threshold = inline_run::threshold();
        let on = !threshold.is_zero() && !self.retiring;
        let ids: Vec<(usize, *const SharedEngine)> = match on {
            true => self
                .replicas
                .iter()
                .filter_map(|s| Some((s.id, Arc::as_ptr(serving_engine(s)?))))
                .collect(),
            false => Vec::new(),
        };
        let now = Instant::now();
        {
            let published = self.inline_published.borrow();
            let recent = published
                .at
                .is_some_and(|at| now.duration_since(at) < RECOMPUTE_EVERY);
            if recent && published.replicas == ids {
                drop(published);
                lane.reopen();
                self.note_inline_open();
                return;
            }
        }
        let mut engines = Vec::new();
        let mut max_items = 0;
        if on {
            for (index, slot) in self.replicas.iter().enumerate() {
                let Some(engine) = serving_engine(slot) else {
                    continue;
                };
                engines.push((slot.id, Arc::clone(engine)));
                let cap = self.limits(index).0.min(MAX_INLINE_ITEMS);
                let fits = self
                    .latency
                    .profile(slot.id)
                    .filter(|p| p.estimate(1).is_some_and(|t| t <= threshold))
                    .and_then(|p| p.largest_within(cap, threshold))
                    .unwrap_or(0);
                max_items = max_items.max(fits);
            }
        }
        if max_items == 0 {
            engines.clear();
        }
        let mut published = self.inline_published.borrow_mut();
        if (&ids, max_items) != (&published.replicas, published.max_items) {
            lane.publish(engines, max_items);
        } else {
            lane.reopen();
        }
        *published = InlinePublished {
            replicas: ids,
            max_items,
            at: Some(now),
        };
        drop(published);
        self.note_inline_open();
    }

    /// Opens the lane while nothing waits in the queue (no request may
    /// overtake a waiting one) and the model is not retiring.
    pub(super) fn note_inline_open(&self) {
        let open =
            self.queue.is_empty() && !self.retiring && self.inline_published.borrow().max_items > 0;
        self.state.inline.set_open(open);
    }
}

impl Handler<InlineRunPanicked> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: InlineRunPanicked, ctx: &mut Self::Context) {
        if let Some(slot) = self.slot_mut(msg.replica) {
            slot.errors += msg.items as u64;
        }
        let failed = ReplicaFailed {
            replica: msg.replica,
            error: msg.error,
        };
        <Self as Handler<ReplicaFailed>>::handle(self, failed, ctx);
    }
}
