//! A replica: one engine on one thread of its own (an actix `SyncArbiter`
//! of size one), so blocking inference never runs on the async arbiters.
//!
//! It loads and warms its engine when it starts (at batch size 1 and at the
//! model's cap), runs the batches its batcher sends, answers each request of
//! the batch through that request's own reply channel, and tells the batcher
//! when a batch is done, through the [`ReplicaReports`] it was started with.
//!
//! Its footprint is measured, not guessed: the memory its device has in use
//! before the load and after the load and warmup at batch size 1, with no
//! other load running in the process (see `load`) so that concurrent
//! loads do not blur each other's growth. The batcher corrects the
//! replica's reservation to it (unless `memory_mb` in model.toml sets it).
//! A replica of a model measured already (on the CPU) is not measured
//! again: such loads run side by side, so a model evicted and asked for
//! again does not wait for other models' loads.
//!
//! A batch that runs out of memory is split in halves, each retried, down to
//! single requests (and a request of several items down to single rows): a
//! request fails only when it cannot run on its own. The batcher is then told
//! the largest size that ran, so it lowers the model's cap for a while.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Context, Handler, Recipient, SyncContext};
use tracing::{debug, error, info_span, warn};

use crate::engine::{Engine, EngineFactory, LoadTarget};
use crate::error::{EngineError, InferError};
use crate::inline_run::SharedEngine;
use crate::messages::{
    BatchDone, InferOutcome, InferRequest, ItemMemoryMeasured, RanOutOfMemory, ReloadEngine,
    ReplicaFailed, ReplicaReady, ReplicaStopped, RunBatch,
};
use crate::observer::{BatchObserver, BatchReport};
use crate::tensor::Tensor;

mod allocator;
mod load;
mod split;
mod warmup;

use allocator::return_large_blocks_to_the_system;
use load::Loaded;
use split::{Replies, SplitRun};

/// What a replica is started with.
pub struct ReplicaStart {
    pub id: usize,
    pub model: String,
    pub factory: Arc<dyn EngineFactory>,
    pub target: LoadTarget,
    pub warmup: u32,
    /// The model's batch cap on its device; warmup runs at it.
    pub max_batch_size: usize,
    /// Whether its first load measures its footprint (no replica of the
    /// model has been measured on this device yet).
    pub measure: bool,
}

/// Where a replica reports: its batcher, one recipient per report. All lead
/// to the one mailbox, so reports keep the order they were sent in (the
/// memory per item before `ReplicaReady`, `RanOutOfMemory` before its
/// `BatchDone`).
#[derive(Clone)]
pub struct ReplicaReports {
    ready: Recipient<ReplicaReady>,
    failed: Recipient<ReplicaFailed>,
    done: Recipient<BatchDone>,
    out_of_memory: Recipient<RanOutOfMemory>,
    item_memory: Recipient<ItemMemoryMeasured>,
    stopped: Recipient<ReplicaStopped>,
}

impl ReplicaReports {
    /// Reports to `batcher`, an actor that takes every report a replica sends.
    pub fn new<A>(batcher: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<ReplicaReady>
            + Handler<ReplicaFailed>
            + Handler<BatchDone>
            + Handler<RanOutOfMemory>
            + Handler<ItemMemoryMeasured>
            + Handler<ReplicaStopped>,
    {
        ReplicaReports {
            ready: batcher.clone().recipient(),
            failed: batcher.clone().recipient(),
            done: batcher.clone().recipient(),
            out_of_memory: batcher.clone().recipient(),
            item_memory: batcher.clone().recipient(),
            stopped: batcher.clone().recipient(),
        }
    }
}

/// One model instance.
pub struct Replica {
    id: usize,
    model: String,
    factory: Arc<dyn EngineFactory>,
    /// The device it runs on and the memory reserved there.
    target: LoadTarget,
    warmup: u32,
    /// The model's batch cap when the replica started; warmup runs at it.
    max_batch_size: usize,
    /// Whether its first load measures its footprint.
    measure_first_load: bool,
    /// Its engine once loaded; workers may run short requests on it (see
    /// [`crate::inline_run`]).
    engine: Arc<SharedEngine>,
    batcher: ReplicaReports,
    observer: Arc<dyn BatchObserver>,
}

impl Replica {
    /// Starts a replica on a new thread; it reports readiness to `batcher`.
    pub fn start(
        plan: ReplicaStart,
        batcher: ReplicaReports,
        observer: Arc<dyn BatchObserver>,
    ) -> Addr<Replica> {
        return_large_blocks_to_the_system();
        actix::SyncArbiter::start(1, move || {
            // Runs on the replica's own thread, before its engine loads.
            crate::engine::compute_priority::lower_this_thread();
            Replica {
                id: plan.id,
                model: plan.model.clone(),
                factory: plan.factory.clone(),
                target: plan.target,
                warmup: plan.warmup,
                max_batch_size: plan.max_batch_size,
                measure_first_load: plan.measure,
                engine: Arc::new(SharedEngine::default()),
                batcher: batcher.clone(),
                observer: observer.clone(),
            }
        })
    }

    /// Loads (measuring the footprint when `measure`: a first load, not a
    /// reload after the engine was dropped here) and reports to the batcher.
    fn report_load(&mut self, measure: bool) {
        // A panic while loading or warming up must still be reported, or
        // the batcher would wait for this replica forever.
        let loaded =
            catch_unwind(AssertUnwindSafe(|| self.load(measure))).unwrap_or_else(|panic| {
                Err(EngineError::Load(format!(
                    "panicked while loading: {}",
                    panic_message(&panic)
                )))
            });
        match loaded {
            Ok(Loaded {
                signature,
                mb_per_item,
                footprint_mb,
                weights_mapped,
                warmup_runs,
            }) => {
                if let Some(mb_per_item) = mb_per_item {
                    self.batcher.item_memory.do_send(ItemMemoryMeasured {
                        replica: self.id,
                        mb_per_item,
                    });
                }
                self.batcher.ready.do_send(ReplicaReady {
                    replica: self.id,
                    engine: self.engine.clone(),
                    signature,
                    footprint_mb,
                    weights_mapped,
                    warmup_runs,
                })
            }
            Err(e) => {
                error!(model = %self.model, replica = self.id, error = %e, "replica failed to load");
                self.batcher.failed.do_send(ReplicaFailed {
                    replica: self.id,
                    error: e.to_string(),
                });
            }
        }
    }
}

impl Actor for Replica {
    type Context = SyncContext<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.report_load(self.measure_first_load);
    }
}

impl Drop for Replica {
    /// The thread ends: the engine's memory is given back to the system,
    /// then the batcher is told, so that the reservation outlives it.
    fn drop(&mut self) {
        self.drop_engine();
        self.batcher
            .stopped
            .do_send(ReplicaStopped { replica: self.id });
    }
}

impl Handler<ReloadEngine> for Replica {
    type Result = ();

    fn handle(&mut self, _: ReloadEngine, _ctx: &mut Self::Context) {
        self.drop_engine();
        self.report_load(false);
    }
}

impl Handler<RunBatch> for Replica {
    type Result = ();

    fn handle(&mut self, msg: RunBatch, _ctx: &mut Self::Context) {
        let items: usize = msg.entries.iter().map(|e| e.items).sum();
        let span = info_span!("batch", model = %self.model, replica = self.id, batch_id = msg.batch_id, batch_size = items);
        // In a trace (crate gantry's telemetry), the batch is a span of its
        // own linked to the span of every request it runs.
        for entry in &msg.entries {
            span.follows_from(entry.span.id());
        }
        let _guard = span.enter();
        let shared = self.engine.clone();
        let mut held = shared.lock();
        let Some(engine) = held.as_mut() else {
            self.batcher.done.do_send(BatchDone {
                replica: self.id,
                items,
                failed_items: items,
                engine_fault: true,
                took: Duration::ZERO,
            });
            answer_all(
                msg.entries,
                InferError::Inference("replica has no loaded engine".into()),
            );
            return;
        };
        let started = Instant::now();
        let mut run = SplitRun::new(engine.as_mut(), &self.model, msg.batch_id, self.id);
        run.batch(msg.entries);
        let SplitRun {
            largest_ok,
            ran_out,
            panicked,
            device_failed,
            failed,
            faults,
            input_time,
            infer_time,
            output_time,
            mut replies,
            ..
        } = run;
        drop(held);
        let engine_fault = faults > 0 || panicked.is_some() || device_failed.is_some();
        let inference = started.elapsed();
        if let Some(why) = panicked {
            // Its callers do not wait for the reload.
            replies.send();
            error!(error = %why, "engine panicked; reloading the replica");
            self.drop_engine();
            self.report_load(false);
        }
        if let Some(batch_size) = ran_out {
            warn!(
                batch_size,
                largest_ok, "batch ran out of memory; asking the batcher for a lower cap"
            );
            self.batcher.out_of_memory.do_send(RanOutOfMemory {
                replica: self.id,
                batch_size,
                largest_ok,
            });
        }
        let ok = failed == 0;
        self.observer.batch_finished(&BatchReport {
            model: &self.model,
            replica: self.id,
            items,
            inference,
            input: input_time,
            infer: infer_time,
            output: output_time,
            ok,
        });
        self.batcher.done.do_send(BatchDone {
            replica: self.id,
            items,
            failed_items: failed.min(items),
            engine_fault,
            took: inference,
        });
        replies.send();
        if let Some(why) = device_failed {
            error!(error = %why, device = %self.target.device, "the device failed; the replica stops and is restarted");
            self.drop_engine();
            self.batcher.failed.do_send(ReplicaFailed {
                replica: self.id,
                error: format!("the device failed: {why}"),
            });
        }
    }
}

/// Stacks each input of every entry along the batch dimension.
fn stack_inputs(entries: &[InferRequest]) -> std::borrow::Cow<'_, [Tensor]> {
    if entries.len() == 1 {
        // A lone request runs on its own tensors: no copy.
        return std::borrow::Cow::Borrowed(&entries[0].inputs);
    }
    (0..entries[0].inputs.len())
        .map(|i| {
            let parts: Vec<&Tensor> = entries.iter().map(|e| &e.inputs[i]).collect();
            Tensor::concat_batch(&parts)
        })
        .collect()
}

/// What every request of a batch is told about it.
struct BatchFacts<'a> {
    model: &'a str,
    batch_id: u64,
    replica: usize,
    batch_size: usize,
    started: Instant,
    inference_ms: f64,
    input_ms: f64,
}

/// Splits every output back into the entries' rows and answers each entry.
fn split_and_answer(
    entries: Vec<InferRequest>,
    outputs: Vec<Tensor>,
    facts: BatchFacts,
    replies: &mut Replies,
) -> bool {
    let BatchFacts {
        model,
        batch_id,
        replica,
        batch_size,
        started,
        inference_ms,
        input_ms,
    } = facts;
    let outcome = |entry: &InferRequest, outputs: Vec<Tensor>, output_ms: f64| {
        let queue_ms = started
            .saturating_duration_since(entry.enqueued)
            .as_secs_f64()
            * 1000.0;
        entry.span.in_scope(|| {
            debug!(
                model,
                batch_id, batch_size, replica, queue_ms, inference_ms, "inference done"
            )
        });
        InferOutcome {
            outputs,
            batch_size,
            replica,
            queue_ms,
            inference_ms,
            input_ms,
            output_ms,
        }
    };
    if entries.len() == 1 {
        let entry = entries.into_iter().next().expect("one entry");
        let result = outcome(&entry, outputs, 0.0);
        replies.push(entry, Ok(result));
        return true;
    }
    let splitting = Instant::now();
    let rows: Vec<usize> = entries.iter().map(|e| e.items).collect();
    let mut per_entry: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); entries.len()];
    for output in outputs {
        let shape = output.shape.clone();
        let Some(parts) = output.split_batch(&rows) else {
            let why = format!(
                "output of shape {shape:?} cannot be split into the batch's {batch_size} rows"
            );
            replies.fail_all(entries, InferError::Inference(why));
            return false;
        };
        for (slot, part) in per_entry.iter_mut().zip(parts) {
            slot.push(part);
        }
    }
    let output_ms = splitting.elapsed().as_secs_f64() * 1000.0;
    for (entry, outputs) in entries.into_iter().zip(per_entry) {
        let result = outcome(&entry, outputs, output_ms);
        replies.push(entry, Ok(result));
    }
    true
}

fn answer_all(entries: Vec<InferRequest>, error: InferError) {
    for entry in entries {
        entry.answer(Err(error.clone()));
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::split::halves;
    use super::*;
    use crate::engine::fake::FakeEngineFactory;
    use crate::priority::Priority;
    use std::time::Duration;
    use tokio::sync::oneshot;

    type Answer = oneshot::Receiver<Result<InferOutcome, InferError>>;

    /// A request of `rows` rows of width 4, all holding `value`.
    fn request(rows: usize, value: f32) -> (InferRequest, Answer) {
        let (reply, answer) = oneshot::channel();
        let now = Instant::now();
        let inputs = vec![Tensor::from_f32(vec![rows, 4], &vec![value; rows * 4]).unwrap()];
        let request = InferRequest {
            request_id: format!("r{value}"),
            inputs,
            items: rows,
            deadline: now + Duration::from_secs(30),
            priority: Priority::Normal,
            pin: None,
            enqueued: now,
            span: tracing::Span::none(),
            waiting: tracing::Span::none(),
            reply,
        };
        (request, answer)
    }

    fn run(engine: &mut dyn Engine, entries: Vec<InferRequest>) -> (usize, Option<usize>, usize) {
        let mut run = SplitRun::new(engine, "m", 0, 0);
        run.batch(entries);
        run.replies.send();
        (run.largest_ok, run.ran_out, run.failed)
    }

    #[test]
    fn a_batch_that_runs_out_of_memory_is_split_down_to_what_fits() {
        let mut factory = FakeEngineFactory::vector(4);
        factory.fail_above = Some(2);
        let mut engine = factory.load(&LoadTarget::cpu()).unwrap();
        // Five one-row requests and one of three rows: 8 rows in all.
        let (mut entries, mut answers) = (Vec::new(), Vec::new());
        for (i, rows) in [1, 1, 1, 3, 1, 1].into_iter().enumerate() {
            let (r, a) = request(rows, i as f32);
            entries.push(r);
            answers.push((rows, i as f32, a));
        }
        let (largest_ok, ran_out, failed) = run(engine.as_mut(), entries);
        assert_eq!((largest_ok, ran_out, failed), (2, Some(8), 0));
        for (rows, value, mut answer) in answers {
            let outcome = answer.try_recv().unwrap().unwrap();
            assert_eq!(outcome.outputs[0].shape, [rows, 4]);
            let expected = vec![2.0 * value + 1.0; rows * 4];
            assert_eq!(outcome.outputs[0].to_f32().unwrap(), expected);
            assert!(
                outcome.batch_size <= 2,
                "ran in a batch of {}",
                outcome.batch_size
            );
        }
        // 8 ran out, then 3 (1 + 1 + 1): [1] and [1, 1] ran; then 5 (3 + 1 + 1):
        // the 3-row request's rows ran as 1 + 2, then [1, 1].
        let sizes = factory.batch_sizes.lock().unwrap().clone();
        assert_eq!(sizes, [8, 3, 1, 2, 5, 3, 1, 2, 2]);
    }

    #[test]
    fn a_request_fails_only_when_a_single_row_cannot_run() {
        let mut factory = FakeEngineFactory::vector(4);
        factory.fail_above = Some(0);
        let mut engine = factory.load(&LoadTarget::cpu()).unwrap();
        let (a, mut answer_a) = request(1, 1.0);
        let (b, mut answer_b) = request(2, 2.0);
        let (largest_ok, ran_out, failed) = run(engine.as_mut(), vec![a, b]);
        assert_eq!((largest_ok, ran_out, failed), (0, Some(3), 3));
        for answer in [&mut answer_a, &mut answer_b] {
            let error = answer.try_recv().unwrap().unwrap_err();
            assert!(error.to_string().contains("out of memory"), "{error}");
        }
    }

    #[test]
    fn halves_split_by_items() {
        let entries: Vec<InferRequest> =
            [1, 1, 1, 1, 4].iter().map(|&n| request(n, 0.0).0).collect();
        let (first, second) = halves(entries);
        let items = |v: &[InferRequest]| v.iter().map(|e| e.items).collect::<Vec<_>>();
        assert_eq!((items(&first), items(&second)), (vec![1, 1, 1, 1], vec![4]));
        let (first, second) = halves(vec![request(3, 0.0).0]);
        assert_eq!((first.len(), second.len()), (1, 0));
    }
}
