//! A model's latency target (`latency_target_ms`): batches sized to it and
//! requests admitted by their predicted finish.
//!
//! Each replica's [`RunProfile`] (warmup's runs, then every batch) says how
//! long a batch of each size takes; under load, a batch that started when
//! the one before it was done counts the time between the two, so the
//! profile says what the replica gets through, not only how long the engine
//! ran. With a target T:
//! - **Batch cap**: of the batches (up to the model's cap) expected to run
//!   within 0.6 x T / 2 (admission's margin, below), the one that runs the
//!   most items a second. Under load a request waits for the batch before
//!   its own to finish, then its own runs: two runs of the cap must fit T.
//! - **Window**: the oldest request waits for a fuller batch at most
//!   T - 2 x run(cap) (and never more than `batch_window_ms`), so a batch
//!   that would push it past T leaves now.
//! - **Admission**: on arrival, the predicted finish is, in batches as the
//!   replicas run them: what they hold now, the full batches queued ahead
//!   of it (at its priority or above), then its own batch, full by the
//!   time it leaves when anything is ahead of it. Past T less the time the
//!   request already spent in the server (or its own deadline, if sooner),
//!   the prediction taken as 60% of the truth ([`ADMIT_SHARE`]), it is
//!   answered 429 at once, with `Retry-After` from the excess,
//!   instead of queueing to answer late (one with nothing ahead of it
//!   always runs). A high-priority request only counts high-priority work
//!   queued ahead of it, so it is admitted where a low-priority one is
//!   refused. After every dispatch the prediction for one more request of
//!   each priority is published to the model's door
//!   ([`crate::admission`]), which refuses what it says is late where the
//!   request arrives, without the hop here.
//!
//! Without a target, or before any run was measured, nothing changes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Batcher, ReplicaState};
use crate::admission::{self, LateBy, Prediction, ADMIT_SHARE};
use crate::messages::InferRequest;
use crate::priority::Priority;
use crate::run_profile::RunProfile;

/// What a model's latency target decides, and what it refused.
#[derive(Debug, Default)]
pub(super) struct LatencyControl {
    target: Option<Duration>,
    /// Run times by replica id.
    profiles: BTreeMap<usize, RunProfile>,
    /// By replica id: when its last batch was done, and whether another
    /// batch was already waiting at it then (so that one started at once).
    last_done: BTreeMap<usize, (Instant, bool)>,
    /// By replica id: when the batch it runs now started (sent to it idle,
    /// or the one before it was done).
    running_since: BTreeMap<usize, Instant>,
    /// Requests refused at arrival because they would have finished late.
    pub(super) refused_early: u64,
    /// The last prediction made at an arrival: queue delay plus own run.
    pub(super) last_prediction: Option<Duration>,
    /// By replica id: the last cap asked for and the target's cut of it.
    /// Asked at every arrival and dispatch, it changes only when that
    /// replica's profile does (which forgets it).
    caps: RefCell<BTreeMap<usize, (usize, usize)>>,
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
        self.caps.get_mut().remove(&replica);
        let profile = self.profiles.entry(replica).or_default();
        for &(items, took) in runs {
            profile.record(items, took);
        }
    }

    /// Replica `replica` ran a batch of `items` in `took`, done at `now`,
    /// with `more` batches still waiting at it. A batch that started the
    /// moment the one before it was done counts the time between the two
    /// (if longer than its run): what the replica takes per batch under
    /// load, hand-offs and the cores the server's other threads took
    /// between runs included, which admission must predict with.
    pub(super) fn ran(
        &mut self,
        replica: usize,
        items: usize,
        took: Duration,
        now: Instant,
        more: bool,
    ) {
        if more {
            self.running_since.insert(replica, now);
        }
        let cycle = match self.last_done.insert(replica, (now, more)) {
            Some((previous, true)) => now.saturating_duration_since(previous),
            _ => Duration::ZERO,
        };
        if took > Duration::ZERO {
            self.caps.get_mut().remove(&replica);
            self.profiles
                .entry(replica)
                .or_default()
                .record(items, took.max(cycle));
        }
    }

    /// Replica `replica`, idle until now, was sent a batch.
    pub(super) fn started(&mut self, replica: usize, now: Instant) {
        self.running_since.insert(replica, now);
    }

    /// Forgets the profiles of replicas other than `ids` (gone).
    pub(super) fn keep_only(&mut self, ids: impl Iterator<Item = usize>) {
        let ids: Vec<usize> = ids.collect();
        self.profiles.retain(|id, _| ids.contains(id));
        self.last_done.retain(|id, _| ids.contains(id));
        self.running_since.retain(|id, _| ids.contains(id));
        self.caps.get_mut().retain(|id, _| ids.contains(id));
    }

    /// Replica `replica`'s profile, if it ran anything.
    pub(super) fn profile(&self, replica: usize) -> Option<&RunProfile> {
        self.profiles.get(&replica).filter(|p| !p.is_empty())
    }

    /// The cap on a batch for `replica` whose model allows `cap`: of the
    /// batches expected to run within half the target (less admission's
    /// margin, so that admission lets one wait behind another), the
    /// one that runs the most items a second: what goodput under overload
    /// needs. (The smallest batch within 95% of the best, for shorter
    /// waits, measured no better with `make bench-slo`: unet-seg at 2x
    /// capacity kept 0.78-0.96 of capacity that way, 0.73-0.89 this way,
    /// within the machine's noise.)
    pub(super) fn batch_cap(&self, replica: usize, cap: usize) -> usize {
        let (Some(target), Some(profile)) = (self.target, self.profile(replica)) else {
            return cap;
        };
        if let Some(&(asked, cut)) = self.caps.borrow().get(&replica) {
            if asked == cap {
                return cut;
            }
        }
        let cut = profile
            .fastest_within(cap, target.mul_f64(ADMIT_SHARE) / 2)
            .unwrap_or(cap);
        self.caps.borrow_mut().insert(replica, (cap, cut));
        cut
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

    /// Predicts when a request of `items` would finish, with `queued`
    /// items ahead of it in the queue and `ready` replicas running what
    /// they hold, and returns by how much it would pass `allowed` (the
    /// target less the time it already spent in the server, or its
    /// deadline if sooner), the prediction counted as `share` of the
    /// truth; `None` when it would not, when there is no target or when
    /// nothing was measured yet.
    pub(super) fn late_by(
        &mut self,
        items: usize,
        queued: usize,
        ready: &[ReadyReplica],
        allowed: Duration,
        now: Instant,
        share: f64,
    ) -> Option<LateBy> {
        let predicted = self.predict(items, queued, ready, now)?.total();
        self.last_prediction = Some(predicted);
        admission::late_by(predicted, allowed, share)
    }

    /// How long a request of `items` would take to answer, with `queued`
    /// items ahead of it and `ready` replicas running what they hold;
    /// `None` without a target, before anything was measured, or with
    /// nothing ahead of it (it runs at once: the server can do no better,
    /// and a model that refused every request would never run again to
    /// correct a slow measurement, a cold first run at warmup say).
    ///
    /// In batches, as the replicas run them: first what they hold (each
    /// in-flight batch a run of its size, less what the one running has
    /// already run, shared by the replicas), then the
    /// full batches queued ahead of it (at the caps in force, as fast as
    /// the replicas run full batches together), then its own batch, which
    /// fills to the cap by the time it leaves when anything is ahead of it.
    pub(super) fn predict(
        &self,
        items: usize,
        queued: usize,
        ready: &[ReadyReplica],
        now: Instant,
    ) -> Option<Prediction> {
        self.target?;
        let busy = ready.iter().any(|r| r.inflight_batches > 0);
        if queued == 0 && !busy {
            return None;
        }
        let mut full_batches_per_s = 0.0;
        let mut inflight_s = 0.0;
        let mut measured = 0usize;
        let mut smallest_cap = usize::MAX;
        let mut slowest_full = Duration::ZERO;
        for r in ready {
            let Some(profile) = self.profile(r.id) else {
                continue;
            };
            let cap = r.cap.max(1);
            let Some(full) = profile.estimate(cap) else {
                continue;
            };
            measured += 1;
            full_batches_per_s += 1.0 / full.as_secs_f64().max(1e-6);
            smallest_cap = smallest_cap.min(cap);
            slowest_full = slowest_full.max(full);
            if r.inflight_batches > 0 {
                let per_batch = r.inflight_items.div_ceil(r.inflight_batches);
                let run = profile.estimate(per_batch).unwrap_or(full);
                let ran = self
                    .running_since
                    .get(&r.id)
                    .map_or(Duration::ZERO, |since| {
                        now.saturating_duration_since(*since)
                    });
                inflight_s +=
                    r.inflight_batches as f64 * run.as_secs_f64() - ran.min(run).as_secs_f64();
            }
        }
        if measured == 0 {
            return None;
        }
        let full_ahead = queued / smallest_cap;
        let own_run = if busy || full_ahead > 0 {
            slowest_full
        } else {
            // An idle replica takes its batch at once.
            let profile = ready.iter().find_map(|r| self.profile(r.id))?;
            profile.estimate((queued + items).min(smallest_cap))?
        };
        Some(Prediction {
            ahead: Duration::from_secs_f64(
                inflight_s / measured as f64 + full_ahead as f64 / full_batches_per_s,
            ),
            own: own_run,
        })
    }
}

/// A ready replica as admission sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadyReplica {
    pub(super) id: usize,
    /// The batch cap in force (the target's cut included).
    pub(super) cap: usize,
    pub(super) inflight_items: usize,
    pub(super) inflight_batches: usize,
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
        let queued = self.queue.items_ahead_of_each()[request.priority.rank()];
        let ready = self.ready_replicas();
        // The target counts from the request's arrival at the server (its
        // `enqueued` until the batcher sets it to now).
        let now = Instant::now();
        let allowed = admission::allowed(target, request.enqueued, request.deadline, now);
        let Some(late) =
            self.latency
                .late_by(request.items, queued, &ready, allowed, now, ADMIT_SHARE)
        else {
            return Some(request);
        };
        self.latency.refused_early += 1;
        request.answer(Err(admission::would_finish_late(&self.model, target, late)));
        None
    }

    /// The ready replicas as admission sees them.
    fn ready_replicas(&self) -> Vec<ReadyReplica> {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].state == ReplicaState::Ready)
            .map(|i| ReadyReplica {
                id: self.replicas[i].id,
                cap: self.limits(i).0,
                inflight_items: self.replicas[i].inflight_items,
                inflight_batches: self.replicas[i].inflight_batches,
            })
            .collect()
    }

    /// Tells the door (`ModelState::door`) how long one more request of
    /// each priority would take now, so that it refuses what would be
    /// late without a message here; called after every change to the
    /// queue or to what the replicas hold.
    pub(super) fn publish_predictions(&self) {
        if self.latency.target().is_none() {
            return;
        }
        let ready = self.ready_replicas();
        let now = Instant::now();
        let ahead = self.queue.items_ahead_of_each();
        for priority in Priority::ALL {
            // Only with work queued ahead: what runs now may be done
            // (answered) before the batcher hears of it, and a request
            // behind nothing else is the batcher's to judge.
            let queued = ahead[priority.rank()];
            let predicted = (queued > 0)
                .then(|| self.latency.predict(1, queued, &ready, now))
                .flatten();
            self.state.door.publish(priority, predicted, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn now() -> Instant {
        Instant::now()
    }

    /// A replica 0 whose runs take 5 ms + 1 ms per item (measured at 1 and 16).
    fn control(target_ms: Option<u64>) -> LatencyControl {
        let mut control = LatencyControl::new(target_ms);
        control.warmed(0, &[(1, ms(6)), (16, ms(21))]);
        control
    }

    fn idle(id: usize) -> ReadyReplica {
        ReadyReplica {
            id,
            cap: 16,
            inflight_items: 0,
            inflight_batches: 0,
        }
    }

    #[test]
    fn without_a_target_nothing_changes() {
        let mut control = control(None);
        assert_eq!(control.batch_cap(0, 16), 16);
        assert_eq!(control.window(0, 16, ms(100)), ms(100));
        assert_eq!(
            control.late_by(1, 10_000, &[idle(0)], ms(1), now(), ADMIT_SHARE),
            None
        );
    }

    #[test]
    fn batches_and_windows_follow_the_target() {
        let control = control(Some(24));
        // Two runs of the cap within 0.6 x 24 ms: 5 + 2 = 7 ms each, 2
        // items (and 1 runs far fewer a second).
        assert_eq!(control.batch_cap(0, 16), 2);
        // The window leaves the two runs their time: 24 - 2 x 7 = 10.
        assert_eq!(control.window(0, 2, ms(100)), ms(10));
        let relaxed = self::control(Some(100));
        // All 16 fit 30 ms, and 16 runs the most a second.
        assert_eq!(relaxed.batch_cap(0, 16), 16);
        assert_eq!(relaxed.window(0, 16, ms(100)), ms(58));
        assert_eq!(relaxed.window(0, 16, ms(2)), ms(2));
        // A replica never measured keeps the model's cap.
        assert_eq!(relaxed.batch_cap(7, 16), 16);
    }

    #[test]
    fn arrivals_that_would_finish_late_are_refused_with_the_excess() {
        let mut control = control(Some(100));
        // The prediction's arithmetic: counted as the whole truth.
        // Full batches of 16 take 21 ms: 60 queued are 3 full batches
        // (63 ms), then its own, full by then (21 ms): 84 ms.
        assert_eq!(
            control.late_by(1, 60, &[idle(0)], ms(100), now(), 1.0),
            None
        );
        assert_eq!(control.last_prediction, Some(ms(84)));
        // 20 ms already spent in the server leave 80.
        let late = control
            .late_by(1, 60, &[idle(0)], ms(80), now(), 1.0)
            .expect("late");
        assert_eq!(late.excess, ms(4));
        // 160 queued: 10 batches and its own, 231 ms.
        let late = control
            .late_by(1, 160, &[idle(0)], ms(100), now(), 1.0)
            .expect("late");
        assert_eq!(late.excess, ms(131));
        // Less than a batch queued on an idle replica: it leaves at once
        // with them (2 items: 7 ms), so a sooner deadline is what counts.
        assert_eq!(control.late_by(1, 1, &[idle(0)], ms(8), now(), 1.0), None);
        assert!(control
            .late_by(1, 1, &[idle(0)], ms(6), now(), 1.0)
            .is_some());
        // With nothing queued or running it runs, even when too slow.
        assert_eq!(control.late_by(1, 0, &[idle(0)], ms(3), now(), 1.0), None);
        // A full batch running: it waits for it, then its own fills.
        let running = ReadyReplica {
            inflight_items: 16,
            inflight_batches: 1,
            ..idle(0)
        };
        assert_eq!(
            control.late_by(1, 0, &[running], ms(41), now(), 1.0),
            Some(LateBy {
                predicted: ms(42),
                excess: ms(1),
            })
        );
        // Two replicas drain twice as fast: 7 batches in 73.5 ms, then 21.
        control.warmed(1, &[(1, ms(6)), (16, ms(21))]);
        assert_eq!(
            control.late_by(1, 120, &[idle(0), idle(1)], ms(100), now(), 1.0),
            None
        );
        assert!(control
            .late_by(1, 120, &[idle(0)], ms(100), now(), 1.0)
            .is_some());
        // Nothing ready or measured: no prediction.
        assert_eq!(control.late_by(1, 10_000, &[], ms(5000), now(), 1.0), None);
        assert_eq!(
            control.late_by(1, 10_000, &[idle(9)], ms(5000), now(), 1.0),
            None
        );
    }

    #[test]
    fn the_running_batch_counts_what_it_has_left() {
        let mut control = control(Some(100));
        let t0 = Instant::now();
        control.started(0, t0);
        let ms_of =
            |p: Option<Prediction>| p.map(|p| (p.total().as_secs_f64() * 1e3).round() as u64);
        let running = ReadyReplica {
            inflight_items: 16,
            inflight_batches: 1,
            ..idle(0)
        };
        // 10 ms into a run of 21: 11 left, then its own batch (21).
        assert_eq!(
            ms_of(control.predict(1, 0, &[running], t0 + ms(10))),
            Some(32)
        );
        // Past its estimate: nothing left of it is counted.
        assert_eq!(
            ms_of(control.predict(1, 0, &[running], t0 + ms(50))),
            Some(21)
        );
        // A second batch waiting at the replica counts whole.
        let two = ReadyReplica {
            inflight_items: 32,
            inflight_batches: 2,
            ..idle(0)
        };
        assert_eq!(ms_of(control.predict(1, 0, &[two], t0 + ms(10))), Some(53));
        // A batch done with another waiting: that one started then.
        control.ran(0, 16, ms(21), t0 + ms(21), true);
        assert_eq!(
            ms_of(control.predict(1, 0, &[running], t0 + ms(31))),
            Some(32)
        );
    }

    #[test]
    fn back_to_back_batches_count_the_time_between_them() {
        let mut control = LatencyControl::new(Some(100));
        let t0 = Instant::now();
        // Alone: its own run time.
        control.ran(0, 4, ms(8), t0, true);
        assert_eq!(control.profile(0).unwrap().estimate(4), Some(ms(8)));
        // The next was waiting: 12 ms between them, though it ran in 8.
        for i in 1..=8 {
            control.ran(0, 4, ms(8), t0 + ms(12 * i), true);
        }
        assert_eq!(control.profile(0).unwrap().estimate(4), Some(ms(12)));
        // After an idle spell (nothing was waiting) the gap is not a run.
        control.ran(0, 2, ms(5), t0 + ms(200), false);
        control.ran(0, 2, ms(5), t0 + ms(900), false);
        assert_eq!(control.profile(0).unwrap().estimate(2), Some(ms(5)));
    }

    #[test]
    fn admission_keeps_a_margin_in_proportion_to_the_prediction() {
        let mut control = control(Some(100));
        // 60 queued: 84 ms predicted, taken as 140 (84 / 0.6): refused.
        let late = control
            .late_by(1, 60, &[idle(0)], ms(100), now(), ADMIT_SHARE)
            .expect("late");
        assert_eq!(late.predicted, ms(84));
        assert_eq!(late.excess, ms(40));
        // 16 queued: 42 ms, taken as 70: admitted with 75 ms left, even
        // when most of the target went before the batcher saw it.
        assert_eq!(
            control.late_by(1, 16, &[idle(0)], ms(75), now(), ADMIT_SHARE),
            None
        );
    }
}
