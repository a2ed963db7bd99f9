//! One long CPU run at a time on ONNX Runtime's shared thread pool.
//!
//! Every CPU session shares one intra-op pool sized to the cores. Two long
//! runs at once (two replicas of a big model, or two big models) split each
//! operator's work across the same threads and each waits on the other's
//! stragglers: on 2 cores, two replicas of the reference UNet gave 313
//! items/s running together and 368 taking turns. So a run predicted to
//! take at least the gate's threshold (the session's shortest recent time per item,
//! times the items of this batch) waits for the gate; shorter runs (a small
//! model, a small batch) never wait, so a big model's batch cannot hold up
//! a small model's answer. The replica still stacks the next batch and
//! splits the last one's outputs while another replica runs.
//!
//! On a pool of one thread (`runtime.intra_op_threads = 1`) with more cores
//! than one there is nothing to share: ONNX Runtime runs each operator on
//! the thread that called it, so each replica computes on its own thread
//! and two runs at once use two cores. The gate is then off
//! ([`threshold_for`]): turns would leave every core but one idle. A process
//! held to one core keeps it: there two runs at once only slice that core,
//! and turns let the first one finish sooner.
//!
//! Waiting is counted ([`PoolGate::stats`]) so that it shows in the stats
//! and `/metrics` as what it is, and the time a run waited is not taken for
//! the run's own length in the next prediction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

/// The process's gate, shared by every CPU session on the shared pool.
pub static POOL_GATE: PoolGate = PoolGate::new();

/// The gate's counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGateStats {
    /// Runs long enough to take the gate (0 ms threshold: the gate is off).
    pub threshold_us: u64,
    /// Runs that took the gate.
    pub gated_runs: u64,
    /// Of those, runs that found it taken and waited.
    pub waited_runs: u64,
    /// Total time runs waited for it.
    pub wait_us: u64,
}

/// A mutex taken by long runs, with its threshold and counters.
#[derive(Debug)]
pub struct PoolGate {
    turn: Mutex<()>,
    /// Predicted run length, in microseconds, from which a run takes the
    /// gate; 0 turns the gate off.
    threshold_us: AtomicU64,
    gated_runs: AtomicU64,
    waited_runs: AtomicU64,
    wait_us: AtomicU64,
}

/// What [`PoolGate::enter`] hands back: the turn (when the run took the
/// gate) and how long it waited for it.
pub struct Entered<'a> {
    _turn: Option<MutexGuard<'a, ()>>,
    pub waited: Duration,
}

impl PoolGate {
    pub const fn new() -> PoolGate {
        PoolGate {
            turn: Mutex::new(()),
            threshold_us: AtomicU64::new(0),
            gated_runs: AtomicU64::new(0),
            waited_runs: AtomicU64::new(0),
            wait_us: AtomicU64::new(0),
        }
    }

    /// Sets the threshold; `Duration::ZERO` turns the gate off.
    pub fn set_threshold(&self, threshold: Duration) {
        self.threshold_us.store(
            u64::try_from(threshold.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Takes the gate when a run predicted to take `predicted` should (the
    /// gate is on and the prediction reaches its threshold), waiting for
    /// the run that holds it; otherwise returns at once without it. The
    /// turn lasts as long as the returned value.
    pub fn enter(&self, predicted: Duration) -> Entered<'_> {
        let threshold = self.threshold_us.load(Ordering::Relaxed);
        if threshold == 0 || predicted < Duration::from_micros(threshold) {
            return Entered {
                _turn: None,
                waited: Duration::ZERO,
            };
        }
        self.gated_runs.fetch_add(1, Ordering::Relaxed);
        if let Some(turn) = self.turn.try_lock() {
            return Entered {
                _turn: Some(turn),
                waited: Duration::ZERO,
            };
        }
        let started = Instant::now();
        // parking_lot's mutex hands the lock over fairly now and then, so a
        // replica that runs again at once cannot keep another waiting.
        let turn = self.turn.lock();
        let waited = started.elapsed();
        self.waited_runs.fetch_add(1, Ordering::Relaxed);
        self.wait_us.fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Entered {
            _turn: Some(turn),
            waited,
        }
    }

    pub fn stats(&self) -> PoolGateStats {
        PoolGateStats {
            threshold_us: self.threshold_us.load(Ordering::Relaxed),
            gated_runs: self.gated_runs.load(Ordering::Relaxed),
            waited_runs: self.waited_runs.load(Ordering::Relaxed),
            wait_us: self.wait_us.load(Ordering::Relaxed),
        }
    }
}

/// The gate's threshold for a shared pool of `pool_threads` threads in a
/// process with `cores` cores, and the configured `exclusive_run`: off
/// (zero) when the pool has a single thread and there are more cores, so
/// runs share no thread and each can have a core.
pub fn threshold_for(pool_threads: usize, cores: usize, exclusive_run: Duration) -> Duration {
    if pool_threads == 1 && cores > 1 {
        Duration::ZERO
    } else {
        exclusive_run
    }
}

impl Default for PoolGate {
    fn default() -> Self {
        PoolGate::new()
    }
}

/// Runs a prediction remembers.
const REMEMBERED_RUNS: usize = 4;

/// A session's run length per batch item, learnt from its recent runs,
/// which predicts the next run's length from its batch size. The
/// prediction is the shortest of the last [`REMEMBERED_RUNS`] per-item
/// times: a run the machine preempted (or that waited on a busy core) only
/// ever takes longer than the session's own cost, so one such run does not
/// send a model of microsecond runs to the gate; a model that really became
/// slower (bigger inputs) shows it in every run, and within four runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunLength {
    per_item: [Option<Duration>; REMEMBERED_RUNS],
    next: usize,
}

impl RunLength {
    /// The predicted length of a run of `items` (zero before any run: the
    /// first run, warmup's, measures the session alone).
    pub fn predict(&self, items: usize) -> Duration {
        let shortest = self.per_item.iter().flatten().min().copied();
        shortest
            .unwrap_or_default()
            .saturating_mul(u32::try_from(items.max(1)).unwrap_or(u32::MAX))
    }

    /// Learns from a run of `items` that took `took` (its wait excluded).
    pub fn record(&mut self, items: usize, took: Duration) {
        self.per_item[self.next] = Some(took / u32::try_from(items.max(1)).unwrap_or(u32::MAX));
        self.next = (self.next + 1) % REMEMBERED_RUNS;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Barrier;

    use super::*;

    #[test]
    fn an_off_gate_and_short_runs_never_take_it() {
        let gate = PoolGate::new();
        assert!(gate.enter(Duration::from_secs(1))._turn.is_none());
        gate.set_threshold(Duration::from_millis(1));
        let short = gate.enter(Duration::from_micros(999));
        assert!(short._turn.is_none());
        // A short run passes while a long one holds the gate.
        let long = gate.enter(Duration::from_millis(1));
        assert!(long._turn.is_some());
        assert!(gate.enter(Duration::from_micros(10))._turn.is_none());
        drop(long);
        let stats = gate.stats();
        assert_eq!((stats.threshold_us, stats.gated_runs), (1000, 1));
        assert_eq!(stats.waited_runs, 0);
    }

    #[test]
    fn a_pool_of_one_thread_has_no_gate_where_there_are_more_cores() {
        let configured = Duration::from_millis(1);
        assert_eq!(threshold_for(1, 2, configured), Duration::ZERO);
        assert_eq!(threshold_for(2, 2, configured), configured);
        // One core: two runs at once would only slice it.
        assert_eq!(threshold_for(1, 1, configured), configured);
        assert_eq!(threshold_for(16, 16, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn long_runs_take_turns_and_their_waits_are_counted() {
        let gate = Arc::new(PoolGate::new());
        gate.set_threshold(Duration::from_millis(1));
        let held = gate.enter(Duration::from_millis(5));
        let barrier = Arc::new(Barrier::new(2));
        let waiter = {
            let (gate, barrier) = (gate.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                gate.enter(Duration::from_millis(5)).waited
            })
        };
        barrier.wait();
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        let waited = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(20), "waited {waited:?}");
        let stats = gate.stats();
        assert_eq!((stats.gated_runs, stats.waited_runs), (2, 1));
        assert!(stats.wait_us >= 20_000, "{stats:?}");
    }

    #[test]
    fn a_run_is_predicted_from_the_shortest_recent_time_per_item() {
        let mut length = RunLength::default();
        assert_eq!(length.predict(8), Duration::ZERO);
        length.record(4, Duration::from_millis(8));
        assert_eq!(length.predict(1), Duration::from_millis(2));
        assert_eq!(length.predict(8), Duration::from_millis(16));
        // One slow run (preempted) does not change the prediction.
        length.record(1, Duration::from_millis(30));
        assert_eq!(length.predict(1), Duration::from_millis(2));
        // Runs that are all slower do, once the fast one is forgotten.
        for _ in 0..3 {
            length.record(1, Duration::from_millis(5));
        }
        assert_eq!(length.predict(1), Duration::from_millis(5));
        length.record(0, Duration::from_millis(3));
        assert_eq!(length.predict(0), Duration::from_millis(3));
    }
}
