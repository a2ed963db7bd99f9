//! How a model is being used, as its batcher records it and the supervisor
//! reads it when it decides what stays in memory: work queued and running,
//! requests since it was last loaded, its demand (requests, each counted
//! less as it ages), when it was last asked for, how long a load takes,
//! items and batches run, and since when each replica has been ready (and
//! whether it maps its weights). Plain atomics (and two small locks),
//! written by the batcher, read without a message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Milliseconds since the first call in this process, plus one (0 stays
/// free to mean "never"): a clock that fits an atomic.
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// How fast a request stops counting in a model's demand: it counts half
/// after this long, a quarter after twice as long. Short enough that a
/// model popular a minute ago but asked for rarely now ranks with the rare
/// ones within seconds, long enough that a model asked for a few times a
/// second keeps a steady figure.
pub const DEMAND_HALF_LIFE: Duration = Duration::from_secs(5);

/// Requests, each weighted by `0.5^(age / DEMAND_HALF_LIFE)`, as of
/// [`clock_ms`] `at_ms`.
#[derive(Debug, Default, Clone, Copy)]
struct Demand {
    requests: f64,
    at_ms: u64,
}

impl Demand {
    fn at(self, now_ms: u64) -> f64 {
        let age = now_ms.saturating_sub(self.at_ms) as f64;
        self.requests * 0.5f64.powf(age / DEMAND_HALF_LIFE.as_millis() as f64)
    }
}

/// One model's use, shared by its batcher (which writes it) and the
/// supervisor (which reads it).
#[derive(Debug, Default)]
pub struct ModelUsage {
    /// Requests waiting in the batcher's queue.
    queued: AtomicUsize,
    /// Items in batches its replicas are running or hold.
    inflight: AtomicUsize,
    /// Requests the batcher took, ever.
    requests: AtomicU64,
    /// `requests` when the model last went from no ready replica to one.
    requests_at_load: AtomicU64,
    /// [`clock_ms`] of the last request (0: none yet).
    last_request_ms: AtomicU64,
    /// Requests, the recent ones counting most.
    demand: parking_lot::Mutex<Demand>,
    /// How long a load takes (0: not known yet); see [`Self::load_time`].
    load_ms: AtomicU64,
    /// True once a replica that maps its weights has loaded.
    mapped_load_seen: AtomicBool,
    /// Ready replicas by id.
    ready_since: Mutex<BTreeMap<usize, ReadyReplica>>,
    /// Items its replicas ran without failing, ever.
    processed: AtomicU64,
    /// Batches (of at least one item) its replicas ran, ever.
    batches: AtomicU64,
}

/// One ready replica.
#[derive(Debug, Clone, Copy)]
struct ReadyReplica {
    /// The [`clock_ms`] it turned ready at.
    since_ms: u64,
    /// It maps its weights from a split copy of the model file.
    mapped: bool,
}

impl ModelUsage {
    /// Notes a request taken into the queue.
    pub(crate) fn requested(&self) {
        let now = clock_ms();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_request_ms.store(now, Ordering::Relaxed);
        let mut demand = self.demand.lock();
        *demand = Demand {
            requests: demand.at(now) + 1.0,
            at_ms: now,
        };
    }

    /// Requests taken, each counted half after [`DEMAND_HALF_LIFE`] (about
    /// the model's requests per second x 7.2 when they come steadily).
    pub fn demand(&self) -> f64 {
        self.demand.lock().at(clock_ms())
    }

    /// Sets the work held now: `queued` requests and `inflight` items.
    pub(crate) fn set_work(&self, queued: usize, inflight: usize) {
        self.queued.store(queued, Ordering::Relaxed);
        self.inflight.store(inflight, Ordering::Relaxed);
    }

    /// Notes a batch of `items` run.
    pub(crate) fn ran(&self, items: u64) {
        if items > 0 {
            self.processed.fetch_add(items, Ordering::Relaxed);
            self.batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Items run, ever.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Batches run, ever (with [`Self::processed`], the mean batch size over
    /// a span).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// True when nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.queued.load(Ordering::Relaxed) == 0 && self.inflight.load(Ordering::Relaxed) == 0
    }

    /// Replica `id` turned ready after a load of `load`; `mapped` when it
    /// maps its weights.
    pub(crate) fn replica_ready(&self, id: usize, load: Duration, mapped: bool) {
        let mut ready = self.ready_since.lock().unwrap_or_else(|e| e.into_inner());
        if ready.is_empty() {
            self.requests_at_load
                .store(self.requests.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let since_ms = clock_ms();
        ready.insert(id, ReadyReplica { since_ms, mapped });
        if mapped {
            self.mapped_load_seen.store(true, Ordering::Relaxed);
        }
        // A load on demand maps its weights: once one has, a packed load
        // (at startup, a scale-up, a repack) says nothing of what the next
        // load on demand will cost.
        if mapped || !self.mapped_load_seen.load(Ordering::Relaxed) {
            self.load_ms
                .store(load.as_millis().max(1) as u64, Ordering::Relaxed);
        }
    }

    /// Only replicas `ids` are ready now.
    pub(crate) fn retain_ready(&self, ids: &[usize]) {
        let mut ready = self.ready_since.lock().unwrap_or_else(|e| e.into_inner());
        ready.retain(|id, _| ids.contains(id));
    }

    /// How long replica `id` has been ready; `None` when it is not.
    pub fn ready_for(&self, id: usize) -> Option<Duration> {
        let ready = self.ready_since.lock().unwrap_or_else(|e| e.into_inner());
        let since = ready.get(&id)?.since_ms;
        Some(Duration::from_millis(clock_ms().saturating_sub(since)))
    }

    /// The ready replica that maps its weights and has been ready longest,
    /// with how long; `None` when every ready replica holds them packed.
    pub fn longest_mapped(&self) -> Option<(usize, Duration)> {
        let ready = self.ready_since.lock().unwrap_or_else(|e| e.into_inner());
        let (id, oldest) = ready
            .iter()
            .filter(|(_, r)| r.mapped)
            .min_by_key(|(_, r)| r.since_ms)?;
        let age = clock_ms().saturating_sub(oldest.since_ms);
        Some((*id, Duration::from_millis(age)))
    }

    /// Requests taken since the model was last loaded (since it last went
    /// from no ready replica to one).
    pub fn requests_since_load(&self) -> u64 {
        self.requests
            .load(Ordering::Relaxed)
            .saturating_sub(self.requests_at_load.load(Ordering::Relaxed))
    }

    /// Requests taken, ever.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// How long ago the last request came; `None` when none has.
    pub fn idle_for(&self) -> Option<Duration> {
        let last = self.last_request_ms.load(Ordering::Relaxed);
        (last > 0).then(|| Duration::from_millis(clock_ms().saturating_sub(last)))
    }

    /// How long a load and warmup takes, once one has happened: the last
    /// load that mapped its weights once one has (the next load on demand
    /// will map them too), else the last load.
    pub fn load_time(&self) -> Option<Duration> {
        let ms = self.load_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| Duration::from_millis(ms))
    }
}

/// What replicas measured beyond their model files, learned across every
/// model of the process: the opening bid of a model that never loaded is
/// its file plus the largest excess seen (a session holds its weights plus
/// a runtime overhead that hardly depends on them: measured, 1-9 MB over
/// files of 7-39 MB), never more than the file-based estimate, so that a
/// first load does not reserve (and evict for) several times what it will
/// take.
#[derive(Debug, Clone, Default)]
pub struct LearnedFootprints(std::sync::Arc<Mutex<Option<u64>>>);

impl LearnedFootprints {
    /// Notes that a replica of a model whose file is `file_mb` measured
    /// `measured_mb`.
    pub(crate) fn learn(&self, file_mb: u64, measured_mb: u64) {
        let excess = measured_mb.saturating_sub(file_mb);
        let mut learned = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *learned = Some(learned.map_or(excess, |e| e.max(excess)));
    }

    /// The opening bid for a model whose file is `file_mb` and whose
    /// file-based estimate is `estimate_mb`.
    pub fn estimate(&self, file_mb: u64, estimate_mb: u64) -> u64 {
        let learned = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        learned.map_or(estimate_mb, |excess| (file_mb + excess).min(estimate_mb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_since_load_restart_when_the_model_loads_again() {
        let usage = ModelUsage::default();
        usage.requested();
        usage.requested();
        usage.replica_ready(0, Duration::from_millis(40), false);
        usage.requested();
        assert_eq!(usage.requests_since_load(), 1);
        // A second replica does not restart the count...
        usage.replica_ready(1, Duration::from_millis(40), false);
        assert_eq!(usage.requests_since_load(), 1);
        // ...a model that left memory and came back does.
        usage.retain_ready(&[]);
        usage.replica_ready(2, Duration::from_millis(40), false);
        assert_eq!(usage.requests_since_load(), 0);
        assert_eq!(usage.requests(), 3);
        assert!(usage.ready_for(2).is_some() && usage.ready_for(0).is_none());
        assert_eq!(usage.load_time(), Some(Duration::from_millis(40)));
    }

    #[test]
    fn a_mapped_load_sets_the_load_time_and_is_found() {
        let usage = ModelUsage::default();
        usage.replica_ready(0, Duration::from_millis(90), false);
        assert_eq!(usage.longest_mapped(), None);
        usage.replica_ready(1, Duration::from_millis(5), true);
        usage.replica_ready(2, Duration::from_millis(6), true);
        assert_eq!(usage.load_time(), Some(Duration::from_millis(6)));
        assert_eq!(usage.longest_mapped().map(|(id, _)| id), Some(1));
        // A packed load after a mapped one leaves the load time alone.
        usage.replica_ready(3, Duration::from_millis(120), false);
        assert_eq!(usage.load_time(), Some(Duration::from_millis(6)));
        usage.retain_ready(&[0, 2, 3]);
        assert_eq!(usage.longest_mapped().map(|(id, _)| id), Some(2));
    }

    #[test]
    fn batches_count_only_runs_with_items() {
        let usage = ModelUsage::default();
        usage.ran(4);
        usage.ran(0);
        usage.ran(2);
        assert_eq!((usage.processed(), usage.batches()), (6, 2));
    }

    #[test]
    fn demand_halves_every_half_life() {
        let half = DEMAND_HALF_LIFE.as_millis() as u64;
        let demand = Demand {
            requests: 8.0,
            at_ms: 1000,
        };
        assert_eq!(demand.at(1000), 8.0);
        assert!((demand.at(1000 + half) - 4.0).abs() < 1e-9);
        assert!((demand.at(1000 + 3 * half) - 1.0).abs() < 1e-9);
        let usage = ModelUsage::default();
        assert_eq!(usage.demand(), 0.0);
        usage.requested();
        usage.requested();
        assert!(usage.demand() > 1.9 && usage.demand() <= 2.0);
    }

    #[test]
    fn an_unmeasured_model_bids_its_file_plus_the_largest_excess_seen() {
        let learned = LearnedFootprints::default();
        assert_eq!(
            learned.estimate(10, 84),
            84,
            "nothing learned: the estimate"
        );
        learned.learn(7, 16);
        learned.learn(39, 41);
        assert_eq!(learned.estimate(24, 112), 33);
        // Never above the file-based estimate.
        learned.learn(1, 100);
        assert_eq!(learned.estimate(10, 84), 84);
    }

    #[test]
    fn work_queued_or_running_is_not_idle() {
        let usage = ModelUsage::default();
        assert!(usage.is_idle());
        usage.set_work(1, 0);
        assert!(!usage.is_idle());
        usage.set_work(0, 3);
        assert!(!usage.is_idle());
        usage.set_work(0, 0);
        assert!(usage.is_idle());
    }
}
