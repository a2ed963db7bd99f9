//! Admission by predicted finish, at the door: a model's batcher publishes,
//! after each change to its queue and replicas, when one more request of
//! each priority would finish; a request whose prediction passes its
//! latency target (or deadline) is refused 429 by the thread that received
//! it, before it is handed to the batcher.
//!
//! Under overload most arrivals are refused, and each refusal should cost
//! far less than a served request: the hop to the batcher's thread and the
//! answer's hop back are most of a refusal's cost when a model runs in a
//! fraction of a millisecond. The batcher still decides every request it
//! receives ([`crate::batcher`]'s admission), with the queue as it is then:
//! the door only refuses what the batcher's last prediction, less the
//! time since, says would be late, so it refuses about what the batcher
//! would have.
//!
//! The batcher publishes a prediction only while requests are queued ahead
//! (a batch that is running may already be done and answered before the
//! batcher hears of it, so a request behind nothing else is left to the
//! batcher). A prediction holds until the batcher publishes the next one,
//! less the time since for the work ahead (the running batch kept
//! running), or for as long as the work it counts should take, whichever
//! is first: a batcher that saw nothing for that long is not believed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::InferError;
use crate::priority::Priority;

/// Admission counts a prediction as this share of what the request will
/// really take: a request is admitted when its predicted queue and run,
/// divided by it, fit the time it has left. Under overload the queue stays
/// filled up to what admission allows, so the admitted answer close to it;
/// the margin, proportional to the prediction (a longer wait is a longer
/// sum of runs that may each be slower than their median), is for that and
/// for what the batcher does not see (the answer's encoding and sending,
/// the workers' own queue). Measured with `make bench-slo` (unet-seg,
/// 50 ms, 2x and 4x capacity): 0.8 left 1.6-3% of the 200s past the
/// target, 0.7 about 1%. For a model whose batches run in a few ms (the
/// bench's mlp, 50 ms, 2x: `MODELS=mlp WITH=target FACTORS=2
/// load-tests/slo.sh`, nine alternating runs each on one machine), 0.7 left
/// 0.4-4.4% of the 200s past the target (median 1.1%), 0.6 0-1.2% (median
/// 0.6%), with the same goodput (0.75 of capacity on average): the queue
/// 0.6 allows, 30 ms of runs of 2-3 ms, never runs dry under overload; and
/// unet-seg at 2x and 4x kept its goodput (1.00-1.02 and 0.94-0.95 against
/// 0.99-1.03 and 0.91-0.92).
pub const ADMIT_SHARE: f64 = 0.6;

/// A predicted time to answer: the work ahead (what the replicas hold and
/// the batches queued before it), then its own batch's run.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prediction {
    pub ahead: Duration,
    pub own: Duration,
}

impl Prediction {
    pub fn total(&self) -> Duration {
        self.ahead + self.own
    }
}

/// A request predicted to finish past what it is allowed: by how much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LateBy {
    pub predicted: Duration,
    pub excess: Duration,
}

/// Whether a request predicted to take `predicted` (queue and run) passes
/// `allowed`, the prediction counted as `share` of the truth.
pub fn late_by(predicted: Duration, allowed: Duration, share: f64) -> Option<LateBy> {
    let with_margin = predicted.div_f64(share);
    (with_margin > allowed).then(|| LateBy {
        predicted,
        excess: with_margin - allowed,
    })
}

/// The 429 for a request of `model` predicted to pass `target` by `late`.
pub fn would_finish_late(model: &str, target: Duration, late: LateBy) -> InferError {
    InferError::WouldFinishLate {
        model: model.to_string(),
        predicted_ms: late.predicted.as_millis() as u64,
        target_ms: target.as_millis() as u64,
        retry_after_ms: late.excess.as_millis() as u64,
    }
}

/// The time a request may still take: its target less the time it already
/// spent in the server since `arrived`, or until its `deadline` if sooner.
pub fn allowed(target: Duration, arrived: Instant, deadline: Instant, now: Instant) -> Duration {
    target
        .saturating_sub(now.saturating_duration_since(arrived))
        .min(deadline.saturating_duration_since(now))
}

/// A published duration's unit, µs, and its field (20 bits: 10.5 s).
const UNIT_US: u128 = 10;
const FIELD: u64 = (1 << 20) - 1;
/// The publication time's field: 24 bits of ms (wraps after 4.6 hours;
/// every change to the queue publishes again).
const MS_MASK: u64 = (1 << 24) - 1;

/// A model's published predictions, one per priority, and what the door
/// refused.
#[derive(Debug)]
pub struct AdmissionDoor {
    epoch: Instant,
    /// By [`Priority::rank`]: when the prediction was published (ms since
    /// `epoch`, 24 bits, wrapping) in the high bits, then the work ahead and
    /// the own run (10 µs units, 20 bits each); 0 when nothing is ahead (it
    /// would run at once) or nothing was measured.
    predictions: [AtomicU64; 3],
    refused: AtomicU64,
}

impl Default for AdmissionDoor {
    fn default() -> Self {
        AdmissionDoor {
            epoch: Instant::now(),
            predictions: Default::default(),
            refused: AtomicU64::new(0),
        }
    }
}

impl AdmissionDoor {
    /// The batcher's prediction, at `now`, of how long one more request at
    /// `priority` would take to answer (`None`: it would run at once).
    pub fn publish(&self, priority: Priority, predicted: Option<Prediction>, now: Instant) {
        let units = |d: Duration| (d.as_micros() / UNIT_US).min(u128::from(FIELD)) as u64;
        let word = match predicted {
            Some(p) if p.total() > Duration::ZERO => {
                let own = units(p.own).max(u64::from(p.ahead.is_zero()));
                (self.ms_at(now) << 40) | (units(p.ahead) << 20) | own
            }
            _ => 0,
        };
        self.predictions[priority.rank()].store(word, Ordering::Relaxed);
    }

    /// The published prediction for `priority` as it stands at `now`: the
    /// work ahead less the time since it was published (the running batch
    /// kept running), then the own run; `None` once the whole of it should
    /// have been done, or when nothing was published.
    pub fn prediction(&self, priority: Priority, now: Instant) -> Option<Duration> {
        let word = self.predictions[priority.rank()].load(Ordering::Relaxed);
        if word == 0 {
            return None;
        }
        let field = |shift: u32| Duration::from_micros(((word >> shift) & FIELD) * UNIT_US as u64);
        let (ahead, own) = (field(20), field(0));
        let age_ms = self.ms_at(now).wrapping_sub(word >> 40) & MS_MASK;
        let age = Duration::from_millis(age_ms);
        (age <= ahead + own).then(|| ahead.saturating_sub(age) + own)
    }

    /// Whether a request at `priority` that arrived at `arrived` with
    /// `deadline` would finish past `target`, by the last prediction; a
    /// refusal is counted.
    pub fn refuses(
        &self,
        priority: Priority,
        target: Duration,
        arrived: Instant,
        deadline: Instant,
    ) -> Option<LateBy> {
        let now = Instant::now();
        let predicted = self.prediction(priority, now)?;
        let allowed = allowed(target, arrived, deadline, now);
        let late = late_by(predicted, allowed, ADMIT_SHARE)?;
        self.refused.fetch_add(1, Ordering::Relaxed);
        Some(late)
    }

    /// Requests refused at the door so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Milliseconds from `epoch` to `at`, in 24 bits (wrapping).
    fn ms_at(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_millis() as u64) & MS_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ahead_own(ahead_ms: u64, own_ms: u64) -> Prediction {
        Prediction {
            ahead: ms(ahead_ms),
            own: ms(own_ms),
        }
    }

    #[test]
    fn a_prediction_past_the_target_is_refused_with_the_excess() {
        let door = AdmissionDoor::default();
        let now = Instant::now();
        let far = now + ms(10_000);
        // Nothing published: everyone is let through.
        assert_eq!(door.refuses(Priority::Normal, ms(50), now, far), None);
        // 42 ms predicted, counted as 70 (42 / 0.6): past a 50 ms target.
        door.publish(Priority::Normal, Some(ahead_own(21, 21)), now);
        let late = door
            .refuses(Priority::Normal, ms(50), now, far)
            .expect("refused");
        assert_eq!(late.predicted, ms(42));
        // (A little more than 20: some of the target went by since.)
        assert!(late.excess >= ms(20) && late.excess < ms(21), "{late:?}");
        assert_eq!(door.refused(), 1);
        // Within a 100 ms target; a sooner deadline still refuses it.
        assert_eq!(door.refuses(Priority::Normal, ms(100), now, far), None);
        assert!(door
            .refuses(Priority::Normal, ms(100), now, Instant::now() + ms(20))
            .is_some());
        // Each priority has its own prediction.
        assert_eq!(door.refuses(Priority::High, ms(50), now, far), None);
        // Nothing ahead any more: let through.
        door.publish(Priority::Normal, None, now);
        assert_eq!(door.refuses(Priority::Normal, ms(50), now, far), None);
        assert_eq!(door.refused(), 2);
    }

    #[test]
    fn a_prediction_shrinks_with_the_work_ahead_and_holds_as_long_as_it() {
        let door = AdmissionDoor::default();
        let published = Instant::now();
        door.publish(Priority::Low, Some(ahead_own(20, 10)), published);
        assert_eq!(door.prediction(Priority::Low, published), Some(ms(30)));
        // 12 ms on, 8 of the work ahead is left; past it, the own run.
        assert_eq!(
            door.prediction(Priority::Low, published + ms(12)),
            Some(ms(18))
        );
        assert_eq!(
            door.prediction(Priority::Low, published + ms(25)),
            Some(ms(10))
        );
        // A batcher silent for longer than its prediction is not believed.
        assert_eq!(door.prediction(Priority::Low, published + ms(32)), None);
        // An own run alone (nothing ahead), in 10 µs units.
        door.publish(Priority::Low, Some(ahead_own(0, 3)), published);
        assert_eq!(door.prediction(Priority::Low, published), Some(ms(3)));
    }

    #[test]
    fn allowed_is_the_target_left_or_the_deadline() {
        let now = Instant::now();
        let arrived = now - ms(20);
        assert_eq!(allowed(ms(50), arrived, now + ms(100), now), ms(30));
        assert_eq!(allowed(ms(50), arrived, now + ms(10), now), ms(10));
        assert_eq!(allowed(ms(10), arrived, now + ms(10), now), ms(0));
    }
}
