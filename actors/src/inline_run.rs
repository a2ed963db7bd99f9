//! Short runs on the thread that received the request.
//!
//! A request for a model that runs in microseconds pays more for its
//! hand-offs than for its run: from the HTTP or gRPC worker to the
//! batcher's thread, on to a replica's thread, and back, each a wakeup on
//! shared cores. So while a model's batcher keeps its lane open (see
//! [`InlineLane`]), the worker runs such a request itself, on the engine of
//! an idle replica: it takes the engine's lock ([`SharedEngine`]), which
//! the replica's own thread takes for each batch it runs. When every
//! replica is busy, when the lane is closed, or when the run fails, the
//! request goes to the batcher as any other (a failed run is run again
//! there, so the batcher's handling of failures answers it).
//!
//! The batcher still decides: it opens the lane only while nothing waits in
//! its queue (no request can overtake a waiting one, whatever its
//! priority), the model has a ready replica, and its runs at the request's
//! size are predicted (from the replicas' run profiles) to take no more
//! than `runtime.inline_run_us`; it closes it while it retires the model.
//! A request pinned to a replica (a sequence's), or whose deadline has
//! passed, always goes to the batcher. Runs are counted as batches of the
//! replica that ran them: in the model's stats and usage (so residency and
//! autoscaling see them) and, through the batch observer, in the metrics.
//! Runs that keep taking longer than the lane allows (four in a row: one
//! alone is more often the worker preempted mid-run) close it until the
//! batcher opens it again after a batch of its own.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::Recipient;
use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::engine::Engine;
use crate::error::InferError;
use crate::messages::{InferOutcome, InlineRunPanicked};
use crate::observer::{BatchObserver, BatchReport};
use crate::tensor::Tensor;
use crate::usage::ModelUsage;

/// Items a run on the caller's thread holds at most.
pub const MAX_INLINE_ITEMS: usize = 64;

/// Runs in a row over the threshold that close the lane: one alone is
/// more often the worker's thread preempted mid-run (by the other
/// threads on its cores) than the model grown slower.
const SLOW_RUNS_TO_CLOSE: u32 = 4;

/// Runs predicted to take at most this many microseconds may run on the
/// caller's thread (`runtime.inline_run_us`; 0 turns the lane off).
static THRESHOLD_US: AtomicU64 = AtomicU64::new(DEFAULT_THRESHOLD_US);

/// The default of `runtime.inline_run_us`.
pub const DEFAULT_THRESHOLD_US: u64 = 50;

/// Sets how short a run must be predicted to be to run on the caller's
/// thread; zero turns every model's lane off.
pub fn set_threshold(threshold: Duration) {
    THRESHOLD_US.store(threshold.as_micros() as u64, Ordering::Relaxed);
}

/// The threshold now.
pub fn threshold() -> Duration {
    Duration::from_micros(THRESHOLD_US.load(Ordering::Relaxed))
}

/// A replica's engine, shared by its thread and the workers that run short
/// requests on it; whoever holds the lock runs.
#[derive(Default)]
pub struct SharedEngine {
    engine: Mutex<Option<Box<dyn Engine>>>,
    /// Items run on it from the caller's thread, ever.
    inline_items: AtomicU64,
}

impl SharedEngine {
    /// The engine, waiting for the worker running on it, if any.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<Box<dyn Engine>>> {
        self.engine.lock()
    }

    /// Items run on it from the caller's thread, ever.
    pub fn inline_items(&self) -> u64 {
        self.inline_items.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for SharedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEngine")
            .field("inline_items", &self.inline_items())
            .finish_non_exhaustive()
    }
}

/// Where the lane reports what the batcher and the metrics must know.
struct LaneLink {
    model: String,
    observer: Arc<dyn BatchObserver>,
    panicked: Recipient<InlineRunPanicked>,
}

/// The engines the lane may run on and the largest request it takes, as
/// the batcher last published them.
#[derive(Default)]
struct Published {
    engines: Vec<(usize, Arc<SharedEngine>)>,
    max_items: usize,
}

/// One model's lane; see the module's documentation.
pub struct InlineLane {
    /// Set by the batcher: nothing waits in its queue and it serves.
    open: AtomicBool,
    /// Cleared after [`SLOW_RUNS_TO_CLOSE`] runs in a row took longer than
    /// the threshold; set again after a batch ran at the batcher.
    fast: AtomicBool,
    /// Runs over the threshold since the last one within it.
    slow_streak: std::sync::atomic::AtomicU32,
    published: RwLock<Published>,
    /// Where the next run starts looking for an idle engine.
    next: AtomicUsize,
    /// `sizes[n]`: runs of `n` items (the runs and items in all follow).
    sizes: [AtomicU64; MAX_INLINE_ITEMS + 1],
    link: OnceLock<LaneLink>,
}

impl Default for InlineLane {
    fn default() -> Self {
        InlineLane {
            open: AtomicBool::new(false),
            fast: AtomicBool::new(true),
            slow_streak: std::sync::atomic::AtomicU32::new(0),
            published: RwLock::default(),
            next: AtomicUsize::new(0),
            sizes: std::array::from_fn(|_| AtomicU64::new(0)),
            link: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for InlineLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineLane")
            .field("open", &self.open.load(Ordering::Relaxed))
            .field("runs", &self.counters().runs)
            .finish_non_exhaustive()
    }
}

/// What the lane ran, for the batcher's stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InlineCounters {
    pub runs: u64,
    pub items: u64,
    /// `sizes[n]`: runs of `n` items (trailing zeros trimmed).
    pub sizes: Vec<u64>,
}

impl InlineLane {
    /// Called once by the model's batcher: where runs are reported.
    pub(crate) fn connect(
        &self,
        model: &str,
        observer: Arc<dyn BatchObserver>,
        panicked: Recipient<InlineRunPanicked>,
    ) {
        let _ = self.link.set(LaneLink {
            model: model.to_string(),
            observer,
            panicked,
        });
    }

    /// The batcher's view: whether requests may run here now.
    pub(crate) fn set_open(&self, open: bool) {
        if self.open.load(Ordering::Relaxed) != open {
            self.open.store(open, Ordering::Relaxed);
        }
    }

    /// The batcher's ready engines and the largest request (items) they
    /// are predicted to run within the threshold (0: none).
    pub(crate) fn publish(&self, engines: Vec<(usize, Arc<SharedEngine>)>, max_items: usize) {
        let mut published = self.published.write();
        published.engines = engines;
        published.max_items = max_items.min(MAX_INLINE_ITEMS);
        drop(published);
        self.reopen();
    }

    /// A batch ran at the batcher: a lane a slow run closed opens again.
    pub(crate) fn reopen(&self) {
        if !self.fast.load(Ordering::Relaxed) {
            self.slow_streak.store(0, Ordering::Relaxed);
            self.fast.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the lane may take requests now.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) && self.fast.load(Ordering::Relaxed)
    }

    /// What ran here, ever.
    pub fn counters(&self) -> InlineCounters {
        let mut sizes: Vec<u64> = self
            .sizes
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        while sizes.last() == Some(&0) {
            sizes.pop();
        }
        InlineCounters {
            runs: sizes.iter().sum(),
            items: sizes
                .iter()
                .enumerate()
                .map(|(n, runs)| n as u64 * runs)
                .sum(),
            sizes,
        }
    }

    /// An engine no one runs on now, for a request of `items` still within
    /// its `deadline`, starting from the next in turn.
    fn idle_engine(&self, items: usize, deadline: Instant) -> Option<(usize, Arc<SharedEngine>)> {
        let published = self.published.read();
        if items == 0 || items > published.max_items || Instant::now() >= deadline {
            return None;
        }
        let count = published.engines.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count).find_map(|offset| {
            let (replica, shared) = &published.engines[(start + offset) % count];
            (!shared.engine.is_locked()).then(|| (*replica, Arc::clone(shared)))
        })
    }

    /// Runs a request of `items` here if the lane is open and an engine
    /// is idle; `None` sends it to the batcher.
    pub(crate) fn run(
        &self,
        usage: &ModelUsage,
        inputs: &[Tensor],
        items: usize,
        deadline: Instant,
    ) -> Option<Result<InferOutcome, InferError>> {
        if !self.is_open() {
            return None;
        }
        let link = self.link.get()?;
        let (replica, shared) = self.idle_engine(items, deadline)?;
        // Another worker may have taken it since: then the batcher runs it.
        let mut guard = shared.engine.try_lock()?;
        let engine = guard.as_mut()?;
        let span = tracing::info_span!("batch", model = %link.model, replica, batch_size = items, inline = true);
        let _entered = span.enter();
        let started = Instant::now();
        let ran = catch_unwind(AssertUnwindSafe(|| engine.infer(inputs)));
        let took = started.elapsed();
        let outputs = match ran {
            Ok(Ok(outputs)) => outputs,
            // Run again by the batcher's replica, whose handling of a
            // failure (splitting a batch out of memory, reloading an
            // engine that keeps failing) answers it.
            Ok(Err(_)) => return None,
            Err(panic) => {
                *guard = None;
                drop(guard);
                let error = format!("engine panicked: {}", crate::replica::panic_message(&panic));
                tracing::error!(model = %link.model, replica, error = %error, "engine panicked on a worker; the replica restarts");
                link.observer.batch_finished(&BatchReport {
                    ok: false,
                    ..report(&link.model, replica, items, took)
                });
                link.panicked.do_send(InlineRunPanicked {
                    replica,
                    items,
                    error: error.clone(),
                });
                return Some(Err(InferError::Inference(error)));
            }
        };
        drop(guard);
        if took <= threshold() {
            if self.slow_streak.load(Ordering::Relaxed) != 0 {
                self.slow_streak.store(0, Ordering::Relaxed);
            }
        } else if self.slow_streak.fetch_add(1, Ordering::Relaxed) + 1 >= SLOW_RUNS_TO_CLOSE {
            self.fast.store(false, Ordering::Relaxed);
        }
        usage.requested();
        usage.ran(items as u64);
        shared
            .inline_items
            .fetch_add(items as u64, Ordering::Relaxed);
        self.sizes[items].fetch_add(1, Ordering::Relaxed);
        link.observer
            .batch_finished(&report(&link.model, replica, items, took));
        let inference_ms = took.as_secs_f64() * 1e3;
        Some(Ok(InferOutcome {
            outputs,
            batch_size: items,
            replica,
            queue_ms: 0.0,
            inference_ms,
            input_ms: 0.0,
            output_ms: 0.0,
        }))
    }
}

/// A run of `items` on `replica` that took `took`, as the observer hears
/// of a successful batch.
fn report(model: &str, replica: usize, items: usize, took: Duration) -> BatchReport<'_> {
    BatchReport {
        model,
        replica,
        items,
        inference: took,
        input: Duration::ZERO,
        infer: took,
        output: Duration::ZERO,
        ok: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::FakeEngineFactory;
    use crate::engine::{EngineFactory, LoadTarget};
    use crate::observer::NoObserver;
    use actix::{Actor, Context, Handler};
    use std::sync::Mutex as StdMutex;

    /// Stands in for the batcher: keeps the panics it is told about.
    struct Failures(Arc<StdMutex<Vec<InlineRunPanicked>>>);

    impl Actor for Failures {
        type Context = Context<Self>;
    }

    impl Handler<InlineRunPanicked> for Failures {
        type Result = ();
        fn handle(&mut self, msg: InlineRunPanicked, _: &mut Self::Context) {
            self.0.lock().unwrap().push(msg);
        }
    }

    /// An open lane over one engine of `factory` (replica 3) taking up to
    /// 4 items, and the failures it reports.
    fn lane(
        factory: &FakeEngineFactory,
    ) -> (
        InlineLane,
        Arc<SharedEngine>,
        Arc<StdMutex<Vec<InlineRunPanicked>>>,
    ) {
        let failures = Arc::new(StdMutex::new(Vec::new()));
        let lane = InlineLane::default();
        lane.connect(
            "m",
            Arc::new(NoObserver),
            Failures(failures.clone()).start().recipient(),
        );
        let shared = Arc::new(SharedEngine::default());
        *shared.lock() = Some(factory.load(&LoadTarget::cpu()).unwrap());
        lane.publish(vec![(3, shared.clone())], 4);
        lane.set_open(true);
        (lane, shared, failures)
    }

    fn rows(n: usize, value: f32) -> Vec<Tensor> {
        vec![Tensor::from_f32(vec![n, 4], &vec![value; n * 4]).unwrap()]
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[actix_rt::test]
    async fn a_short_request_runs_here_and_counts_as_its_replicas_batch() {
        let factory = FakeEngineFactory::vector(4);
        let (lane, shared, _) = lane(&factory);
        let usage = ModelUsage::default();
        let outcome = lane
            .run(&usage, &rows(2, 1.5), 2, later())
            .unwrap()
            .unwrap();
        assert_eq!(outcome.outputs[0].to_f32().unwrap(), vec![4.0; 8]);
        assert_eq!((outcome.replica, outcome.batch_size), (3, 2));
        let counters = lane.counters();
        assert_eq!((counters.runs, counters.items), (1, 2));
        assert_eq!(counters.sizes, [0, 0, 1]);
        assert_eq!((shared.inline_items(), usage.processed()), (2, 2));
        assert_eq!(*factory.batch_sizes.lock().unwrap(), [2]);
    }

    #[actix_rt::test]
    async fn closed_busy_too_large_or_late_requests_go_to_the_batcher() {
        let factory = FakeEngineFactory::vector(4);
        let (lane, shared, _) = lane(&factory);
        let usage = ModelUsage::default();
        assert!(
            lane.run(&usage, &rows(5, 1.0), 5, later()).is_none(),
            "over the size"
        );
        let past = Instant::now() - Duration::from_millis(1);
        assert!(
            lane.run(&usage, &rows(1, 1.0), 1, past).is_none(),
            "past its deadline"
        );
        let held = shared.lock();
        assert!(
            lane.run(&usage, &rows(1, 1.0), 1, later()).is_none(),
            "engine busy"
        );
        drop(held);
        lane.set_open(false);
        assert!(
            lane.run(&usage, &rows(1, 1.0), 1, later()).is_none(),
            "lane closed"
        );
        lane.set_open(true);
        lane.publish(vec![(3, shared.clone())], 0);
        assert!(
            lane.run(&usage, &rows(1, 1.0), 1, later()).is_none(),
            "no size fits"
        );
        assert!(factory.batch_sizes.lock().unwrap().is_empty());
        assert_eq!((lane.counters().runs, usage.processed()), (0, 0));
    }

    #[actix_rt::test]
    async fn a_failed_run_goes_to_the_batcher_uncounted() {
        let mut factory = FakeEngineFactory::vector(4);
        factory.poison = Some(7.0);
        let (lane, shared, failures) = lane(&factory);
        let usage = ModelUsage::default();
        assert!(lane.run(&usage, &rows(1, 7.0), 1, later()).is_none());
        assert_eq!((lane.counters().runs, usage.processed()), (0, 0));
        assert!(shared.lock().is_some(), "the engine stays");
        assert!(failures.lock().unwrap().is_empty());
        assert!(lane.is_open());
    }

    #[actix_rt::test]
    async fn a_panic_drops_the_engine_and_fails_its_replica() {
        let mut factory = FakeEngineFactory::vector(4);
        factory.panic_on = Some(9.0);
        let (lane, shared, failures) = lane(&factory);
        let usage = ModelUsage::default();
        let error = lane
            .run(&usage, &rows(1, 9.0), 1, later())
            .unwrap()
            .unwrap_err();
        assert!(error.to_string().contains("panicked"), "{error}");
        assert!(shared.lock().is_none(), "the engine is dropped");
        assert!(lane.run(&usage, &rows(1, 1.0), 1, later()).is_none());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let failed = failures.lock().unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!((failed[0].replica, failed[0].items), (3, 1));
    }

    #[actix_rt::test]
    async fn slow_runs_in_a_row_close_the_lane_until_the_batcher_runs_a_batch() {
        let factory = FakeEngineFactory::vector(4)
            .with_delay(threshold() * 4 + Duration::from_millis(1), Duration::ZERO);
        let (lane, _, _) = lane(&factory);
        let usage = ModelUsage::default();
        for _ in 1..SLOW_RUNS_TO_CLOSE {
            assert!(lane.run(&usage, &rows(1, 1.0), 1, later()).unwrap().is_ok());
            assert!(lane.is_open(), "one slow run may be a preempted one");
        }
        assert!(lane.run(&usage, &rows(1, 1.0), 1, later()).unwrap().is_ok());
        assert!(!lane.is_open());
        assert!(lane.run(&usage, &rows(1, 1.0), 1, later()).is_none());
        lane.reopen();
        assert!(lane.is_open());
    }
}
