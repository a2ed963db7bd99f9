//! A model's latency target (`latency_target_ms`): batches sized to it and
//! requests admitted by their predicted finish.
//!
//! Each replica's [`RunProfile`] (warmup's runs, then every batch) says how
//! long a batch of each size takes. With a target T:
//! - **Batch cap**: the largest batch (up to the model's cap) expected to
//!   run within T / 2. Under load a request waits for the batch before its
//!   own to finish, then its own runs: two runs of the cap must fit T.
//! - **Window**: the oldest request waits for a fuller batch at most
//!   T - 2 x run(cap) (and never more than `batch_window_ms`), so a batch
//!   that would push it past T leaves now.
//! - **Admission**: on arrival, the predicted finish is the items ahead of
//!   it (queued at its priority or above, and running) divided by what the
//!   ready replicas run per second at their caps, plus its own run. Past
//!   T (or its own deadline, if sooner) it is answered 429 at once, with
//!   `Retry-After` from the excess, instead of queueing to answer late
//!   (one with nothing ahead of it always runs). A
//!   high-priority request only counts high-priority work ahead of it, so
//!   it is admitted where a low-priority one is refused.
//!
//! Without a target, or before any run was measured, nothing changes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Batcher, ReplicaState};
use crate::error::InferError;
use crate::messages::InferRequest;
use crate::run_profile::RunProfile;

/// What a model's latency target decides, and what it refused.
#[derive(Debug, Default)]
pub(super) struct LatencyControl {
    target: Option<Duration>,
    /// Run times by replica id.
    profiles: BTreeMap<usize, RunProfile>,
    /// Requests refused at arrival because they would have finished late.
    pub(super) refused_early: u64,
    /// The last prediction made at an arrival: queue delay plus own run.
    pub(super) last_prediction: Option<Duration>,
}

/// A request predicted to finish past its target: by how much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct LateBy {
    pub(super) predicted: Duration,
    pub(super) excess: Duration,
}

impl LatencyControl {
    pub(super) fn new(target_ms: Option<u64>) -> Self {
        LatencyControl {
            target: target_ms.map(Duration::from_millis),
            ..Default::default()
        }
    }

    pub(super) fn target(&self) -> Option<Duration> {
        self.target
    }

    /// Replica `replica` warmed up with these runs (size, time).
    pub(super) fn warmed(&mut self, replica: usize, runs: &[(usize, Duration)]) {
        let profile = self.profiles.entry(replica).or_default();
        for &(items, took) in runs {
            profile.record(items, took);
        }
    }

    /// Replica `replica` ran a batch of `items` in `took`.
    pub(super) fn ran(&mut self, replica: usize, items: usize, took: Duration) {
        if took > Duration::ZERO {
            self.profiles
                .entry(replica)
                .or_default()
                .record(items, took);
        }
    }

    /// Forgets the profiles of replicas other than `ids` (gone).
    pub(super) fn keep_only(&mut self, ids: impl Iterator<Item = usize>) {
        let ids: Vec<usize> = ids.collect();
        self.profiles.retain(|id, _| ids.contains(id));
    }

    /// Replica `replica`'s profile, if it ran anything.
    pub(super) fn profile(&self, replica: usize) -> Option<&RunProfile> {
        self.profiles.get(&replica).filter(|p| !p.is_empty())
    }

    /// The cap on a batch for `replica` whose model allows `cap`: the
    /// largest batch expected to run within half the target.
    pub(super) fn batch_cap(&self, replica: usize, cap: usize) -> usize {
        match (self.target, self.profile(replica)) {
            (Some(target), Some(profile)) => profile.largest_within(cap, target / 2).unwrap_or(cap),
            _ => cap,
        }
    }

    /// How long the oldest request may wait for a fuller batch for
    /// `replica` (whose batches hold `cap`): the configured `window`, cut
    /// so that the wait and two runs of the cap stay within the target.
    pub(super) fn window(&self, replica: usize, cap: usize, window: Duration) -> Duration {
        let (Some(target), Some(profile)) = (self.target, self.profile(replica)) else {
            return window;
        };
        let Some(run) = profile.estimate(cap) else {
            return window;
        };
        window.min(target.saturating_sub(run * 2))
    }

    /// Predicts when a request of `items` would finish, waiting behind
    /// `ahead` items, run by `ready` replicas (id, batch cap in force, the
    /// target's cut included); returns by
    /// how much it would pass `allowed` (the sooner of the target and its
    /// deadline), or `None` when it would not, when there is no target or
    /// when nothing was measured yet.
    pub(super) fn late_by(
        &mut self,
        items: usize,
        ahead: usize,
        ready: &[(usize, usize)],
        until_deadline: Duration,
    ) -> Option<LateBy> {
        let target = self.target?;
        // With nothing ahead the server can do no better, and a model that
        // refused every request would never run again to correct a slow
        // measurement (a cold first run at warmup, say).
        if ahead == 0 {
            return None;
        }
        let allowed = target.min(until_deadline);
        let mut items_per_s = 0.0;
        let mut own_run: Option<Duration> = None;
        for &(replica, cap) in ready {
            let Some(profile) = self.profile(replica) else {
                continue;
            };
            let cap = cap.max(1);
            let (Some(full), Some(own)) = (profile.estimate(cap), profile.estimate(items)) else {
                continue;
            };
            items_per_s += cap as f64 / full.as_secs_f64().max(1e-6);
            own_run = Some(own_run.map_or(own, |o| o.min(own)));
        }
        let own_run = own_run?;
        let queue_delay = Duration::from_secs_f64(ahead as f64 / items_per_s);
        let predicted = queue_delay + own_run;
        self.last_prediction = Some(predicted);
        (predicted > allowed).then(|| LateBy {
            predicted,
            excess: predicted - allowed,
        })
    }
}

impl Batcher {
    /// The batch cap and window for replica `index`: the model's, cut to
    /// the latency target's.
    pub(super) fn limits(&self, index: usize) -> (usize, Duration) {
        let Some(slot) = self.replicas.get(index) else {
            return (self.batch_cap(crate::device::Device::Cpu), self.window);
        };
        let cap = self.batch_cap(self.device_of(index));
        let cap = self.latency.batch_cap(slot.id, cap);
        (cap, self.latency.window(slot.id, cap, self.window))
    }

    /// `request`, unless it would finish past its target (or deadline):
    /// then it is answered 429 here and `None` returned.
    pub(super) fn admit(&mut self, request: InferRequest) -> Option<InferRequest> {
        let Some(target) = self.latency.target() else {
            return Some(request);
        };
        let ahead = self.queue.items_ahead_of(request.priority)
            + self
                .replicas
                .iter()
                .map(|r| r.inflight_items)
                .sum::<usize>();
        let ready: Vec<(usize, usize)> = (0..self.replicas.len())
            .filter(|&i| self.replicas[i].state == ReplicaState::Ready)
            .map(|i| (self.replicas[i].id, self.limits(i).0))
            .collect();
        let until_deadline = request.deadline.saturating_duration_since(Instant::now());
        let Some(late) = self
            .latency
            .late_by(request.items, ahead, &ready, until_deadline)
        else {
            return Some(request);
        };
        self.latency.refused_early += 1;
        request.answer(Err(InferError::WouldFinishLate {
            model: self.model.clone(),
            predicted_ms: late.predicted.as_millis() as u64,
            target_ms: target.as_millis() as u64,
            retry_after_ms: late.excess.as_millis() as u64,
        }));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A replica 0 whose runs take 5 ms + 1 ms per item (measured at 1 and 16).
    fn control(target_ms: Option<u64>) -> LatencyControl {
        let mut control = LatencyControl::new(target_ms);
        control.warmed(0, &[(1, ms(6)), (16, ms(21))]);
        control
    }

    #[test]
    fn without_a_target_nothing_changes() {
        let mut control = control(None);
        assert_eq!(control.batch_cap(0, 16), 16);
        assert_eq!(control.window(0, 16, ms(100)), ms(100));
        assert_eq!(control.late_by(1, 10_000, &[(0, 16)], ms(1)), None);
    }

    #[test]
    fn batches_and_windows_follow_the_target() {
        let control = control(Some(20));
        // Two runs of the cap within 20 ms: 5 + 5 = 10 ms each, 5 items.
        assert_eq!(control.batch_cap(0, 16), 5);
        // The window leaves the two runs their time: 20 - 2 x 10 = 0.
        assert_eq!(control.window(0, 5, ms(100)), ms(0));
        let relaxed = self::control(Some(100));
        assert_eq!(relaxed.batch_cap(0, 16), 16);
        assert_eq!(relaxed.window(0, 16, ms(100)), ms(58));
        assert_eq!(relaxed.window(0, 16, ms(2)), ms(2));
        // A replica never measured keeps the model's cap.
        assert_eq!(relaxed.batch_cap(7, 16), 16);
    }

    #[test]
    fn arrivals_that_would_finish_late_are_refused_with_the_excess() {
        let mut control = control(Some(100));
        // 16 items per 21 ms: ~762 items/s; 60 ahead wait ~79 ms, plus 6.
        assert_eq!(control.late_by(1, 60, &[(0, 16)], ms(5000)), None);
        let late = control.late_by(1, 160, &[(0, 16)], ms(5000)).expect("late");
        assert!(late.excess > ms(100) && late.excess < ms(120), "{late:?}");
        // Its own deadline, when sooner, is what it must meet.
        assert!(control.late_by(1, 1, &[(0, 16)], ms(3)).is_some());
        // With nothing ahead it runs, even when its own run is too slow.
        assert_eq!(control.late_by(1, 0, &[(0, 16)], ms(3)), None);
        // Two replicas drain twice as fast.
        control.warmed(1, &[(1, ms(6)), (16, ms(21))]);
        assert_eq!(control.late_by(1, 120, &[(0, 16), (1, 16)], ms(5000)), None);
        // Nothing ready or measured: no prediction.
        assert_eq!(control.late_by(1, 10_000, &[], ms(5000)), None);
    }
}
