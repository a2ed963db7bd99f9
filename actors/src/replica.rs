//! A replica: one engine on one thread of its own (an actix `SyncArbiter`
//! of size one), so blocking inference never runs on the async arbiters.
//!
//! It loads and warms its engine when it starts (at batch size 1 and at the
//! model's cap), runs the batches its batcher sends, answers each request of
//! the batch through that request's own reply channel, and tells the batcher
//! when a batch is done.
//!
//! A batch that runs out of memory is split in halves, each retried, down to
//! single requests (and a request of several items down to single rows): a
//! request fails only when it cannot run on its own. The batcher is then told
//! the largest size that ran, so it lowers the model's cap for a while.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Addr, Handler, SyncContext};
use tracing::{debug, error, info, info_span, warn};

use crate::batcher::Batcher;
use crate::engine::{Engine, EngineFactory};
use crate::error::{EngineError, InferError};
use crate::messages::{
    BatchDone, InferOutcome, InferRequest, ItemMemoryMeasured, RanOutOfMemory, ReplicaFailed,
    ReplicaReady, RunBatch,
};
use crate::observer::BatchObserver;
use crate::signature::ModelSignature;
use crate::tensor::Tensor;

/// One model instance.
pub struct Replica {
    id: usize,
    model: String,
    factory: Arc<dyn EngineFactory>,
    warmup: u32,
    /// The model's batch cap when the replica started; warmup runs at it.
    max_batch_size: usize,
    engine: Option<Box<dyn Engine>>,
    batcher: Addr<Batcher>,
    observer: Arc<dyn BatchObserver>,
}

impl Replica {
    /// Starts a replica on a new thread; it reports readiness to `batcher`.
    pub fn start(
        id: usize,
        model: String,
        factory: Arc<dyn EngineFactory>,
        warmup: u32,
        batcher: Addr<Batcher>,
        observer: Arc<dyn BatchObserver>,
        max_batch_size: usize,
    ) -> Addr<Replica> {
        actix::SyncArbiter::start(1, move || Replica {
            id,
            model: model.clone(),
            factory: factory.clone(),
            warmup,
            max_batch_size,
            engine: None,
            batcher: batcher.clone(),
            observer: observer.clone(),
        })
    }

    /// Loads and warms the engine: `warmup` inferences at batch size 1 and,
    /// for a batched model, as many at its cap. Returns the signature and,
    /// where the engine reports its memory, the MB one item needs.
    fn load(&mut self) -> Result<(ModelSignature, Option<u64>), EngineError> {
        let started = Instant::now();
        let mut engine = self.factory.load()?;
        let signature = engine.signature().clone();
        let cap = if signature.is_batched() {
            self.max_batch_size.max(1)
        } else {
            1
        };
        let mut peaks = (None, None);
        for _ in 0..self.warmup {
            warm_up(engine.as_mut(), &signature, 1)?;
            peaks.0 = engine.last_peak_memory_mb();
            if cap > 1 {
                warm_up(engine.as_mut(), &signature, cap)?;
                peaks.1 = engine.last_peak_memory_mb();
            }
        }
        let mb_per_item = match peaks {
            (Some(one), Some(full)) if full > one => Some((full - one).div_ceil(cap as u64 - 1)),
            _ => None,
        };
        info!(
            model = %self.model,
            replica = self.id,
            load_ms = started.elapsed().as_millis() as u64,
            warmup_batch_sizes = ?[1, cap],
            mb_per_item,
            "replica ready"
        );
        self.engine = Some(engine);
        Ok((signature, mb_per_item))
    }

    fn report_load(&mut self) {
        match self.load() {
            Ok((signature, mb_per_item)) => {
                if let Some(mb_per_item) = mb_per_item {
                    self.batcher.do_send(ItemMemoryMeasured {
                        replica: self.id,
                        mb_per_item,
                    });
                }
                self.batcher.do_send(ReplicaReady {
                    replica: self.id,
                    signature,
                })
            }
            Err(e) => {
                error!(model = %self.model, replica = self.id, error = %e, "replica failed to load");
                self.batcher.do_send(ReplicaFailed {
                    replica: self.id,
                    error: e.to_string(),
                });
            }
        }
    }
}

/// One inference on zeros with `rows` in the batch dimension (a dynamic
/// one; a fixed one keeps its size). Models whose non-batch dimensions are
/// dynamic get size 1 there, which not every model accepts: for those a
/// failed warmup is only logged. So is a failure at the cap (size 1 passed):
/// batches that run out of memory are split when they come.
fn warm_up(
    engine: &mut dyn Engine,
    signature: &ModelSignature,
    rows: usize,
) -> Result<(), EngineError> {
    let fully_static = signature
        .inputs
        .iter()
        .all(|s| s.dims.iter().skip(1).all(Option::is_some));
    let inputs: Vec<Tensor> = signature
        .inputs
        .iter()
        .map(|s| {
            let shape = s
                .dims
                .iter()
                .enumerate()
                .map(|(axis, d)| d.unwrap_or(if axis == 0 { rows } else { 1 }))
                .collect();
            Tensor::zeros(s.dtype, shape)
        })
        .collect();
    match engine.infer(&inputs) {
        Ok(_) => Ok(()),
        Err(EngineError::OutOfMemory(e)) if rows > 1 => {
            warn!(error = %e, rows, "warmup ran out of memory at the batch cap; larger batches will be split");
            Ok(())
        }
        Err(e) if rows > 1 => {
            warn!(error = %e, rows, "warmup at the batch cap failed; the replica serves anyway");
            Ok(())
        }
        Err(e) if !fully_static => {
            warn!(error = %e, "warmup with size-1 dynamic dimensions failed; the replica serves anyway");
            Ok(())
        }
        Err(e) => Err(EngineError::Load(format!("warmup failed: {e}"))),
    }
}

impl Actor for Replica {
    type Context = SyncContext<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.report_load();
    }
}

impl Handler<RunBatch> for Replica {
    type Result = ();

    fn handle(&mut self, msg: RunBatch, _ctx: &mut Self::Context) {
        let items: usize = msg.entries.iter().map(|e| e.items).sum();
        let span = info_span!("batch", model = %self.model, replica = self.id, batch_id = msg.batch_id, batch_size = items);
        let _guard = span.enter();
        let Some(engine) = self.engine.as_mut() else {
            answer_all(
                msg.entries,
                InferError::Inference("replica has no loaded engine".into()),
            );
            self.batcher.do_send(BatchDone {
                replica: self.id,
                items,
                ok: false,
            });
            return;
        };
        let started = Instant::now();
        let mut run = SplitRun {
            engine: engine.as_mut(),
            model: &self.model,
            batch_id: msg.batch_id,
            replica: self.id,
            largest_ok: 0,
            ran_out: None,
            panicked: None,
            failed: 0,
        };
        run.batch(msg.entries);
        let SplitRun {
            largest_ok,
            ran_out,
            panicked,
            failed,
            ..
        } = run;
        let inference = started.elapsed();
        if let Some(why) = panicked {
            error!(error = %why, "engine panicked; reloading the replica");
            self.engine = None;
            self.report_load();
        }
        if let Some(batch_size) = ran_out {
            warn!(
                batch_size,
                largest_ok, "batch ran out of memory; asking the batcher for a lower cap"
            );
            self.batcher.do_send(RanOutOfMemory {
                replica: self.id,
                batch_size,
                largest_ok,
            });
        }
        let ok = failed == 0;
        self.observer
            .batch_finished(&self.model, self.id, items, inference, ok);
        self.batcher.do_send(BatchDone {
            replica: self.id,
            items,
            ok,
        });
    }
}

/// Runs one batch on the engine and answers its requests; a (sub-)batch
/// that runs out of memory is split in halves and each half retried.
struct SplitRun<'a> {
    engine: &'a mut dyn Engine,
    model: &'a str,
    batch_id: u64,
    replica: usize,
    /// Items of the largest (sub-)batch that ran.
    largest_ok: usize,
    /// Items of the first (sub-)batch that ran out of memory.
    ran_out: Option<usize>,
    /// Why the engine panicked; nothing more runs on it.
    panicked: Option<String>,
    /// Items whose requests were answered with an error.
    failed: usize,
}

impl SplitRun<'_> {
    fn batch(&mut self, entries: Vec<InferRequest>) {
        let items: usize = entries.iter().map(|e| e.items).sum();
        let started = Instant::now();
        let result = match &self.panicked {
            Some(why) => Err(EngineError::Run(format!("engine panicked: {why}"))),
            None => {
                let inputs = stack_inputs(&entries);
                self.infer(&inputs)
            }
        };
        match result {
            Ok(outputs) => self.answer(entries, outputs, items, started),
            Err(EngineError::OutOfMemory(why)) if items > 1 => {
                self.ran_out.get_or_insert(items);
                warn!(error = %why, batch_size = items, "batch ran out of memory; splitting it in halves");
                let (first, second) = halves(entries);
                match second.is_empty() {
                    // One request of several items: split its rows instead.
                    true => first.into_iter().for_each(|entry| self.rows(entry)),
                    false => {
                        self.batch(first);
                        self.batch(second);
                    }
                }
            }
            Err(e) => {
                if matches!(e, EngineError::OutOfMemory(_)) {
                    self.ran_out.get_or_insert(items);
                }
                warn!(error = %e, batch_size = items, "batch failed");
                self.failed += items;
                answer_all(entries, InferError::Inference(e.to_string()));
            }
        }
    }

    /// One request of several items that ran out of memory on its own: its
    /// rows run in halves, and it gets the joined outputs.
    fn rows(&mut self, entry: InferRequest) {
        let started = Instant::now();
        match self.split_rows(entry.inputs.clone(), entry.items) {
            Ok((outputs, largest)) => self.answer(vec![entry], outputs, largest, started),
            Err(e) => {
                warn!(error = %e, batch_size = entry.items, "request failed");
                self.failed += entry.items;
                entry.answer(Err(InferError::Inference(e.to_string())));
            }
        }
    }

    /// Runs `rows` stacked rows, halving them whenever they run out of
    /// memory; returns the outputs and the most rows one run held.
    fn infer_rows(
        &mut self,
        inputs: Vec<Tensor>,
        rows: usize,
    ) -> Result<(Vec<Tensor>, usize), EngineError> {
        match self.infer(&inputs) {
            Ok(outputs) => {
                self.largest_ok = self.largest_ok.max(rows);
                Ok((outputs, rows))
            }
            Err(EngineError::OutOfMemory(why)) if rows > 1 => {
                debug!(error = %why, rows, "rows ran out of memory; splitting them in halves");
                self.split_rows(inputs, rows)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `rows` stacked rows (at least 2) as two halves, and joins them.
    fn split_rows(
        &mut self,
        inputs: Vec<Tensor>,
        rows: usize,
    ) -> Result<(Vec<Tensor>, usize), EngineError> {
        let split = [rows / 2, rows - rows / 2];
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for input in inputs {
            let shape = input.shape.clone();
            let mut parts = input.split_batch(&split).into_iter().flatten();
            match (parts.next(), parts.next()) {
                (Some(a), Some(b)) => {
                    first.push(a);
                    second.push(b);
                }
                _ => {
                    return Err(EngineError::Run(format!(
                        "an input of shape {shape:?} cannot be split into {split:?} rows"
                    )))
                }
            }
        }
        let (a, most_a) = self.infer_rows(first, split[0])?;
        let (b, most_b) = self.infer_rows(second, split[1])?;
        Ok((join_rows(a, b)?, most_a.max(most_b)))
    }

    /// One engine run; a panic becomes an error and stops later runs.
    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        if let Some(why) = &self.panicked {
            return Err(EngineError::Run(format!("engine panicked: {why}")));
        }
        let engine = &mut *self.engine;
        match catch_unwind(AssertUnwindSafe(|| engine.infer(inputs))) {
            Ok(result) => result,
            Err(panic) => {
                let why = panic_message(&panic);
                self.panicked = Some(why.clone());
                Err(EngineError::Run(format!("engine panicked: {why}")))
            }
        }
    }

    /// Answers the requests of a (sub-)batch of `items` that ran.
    fn answer(
        &mut self,
        entries: Vec<InferRequest>,
        outputs: Vec<Tensor>,
        items: usize,
        started: Instant,
    ) {
        let inference_ms = started.elapsed().as_secs_f64() * 1000.0;
        debug!(inference_ms, batch_size = items, "batch ran");
        let total: usize = entries.iter().map(|e| e.items).sum();
        let facts = BatchFacts {
            model: self.model,
            batch_id: self.batch_id,
            replica: self.replica,
            batch_size: items,
            started,
            inference_ms,
        };
        if split_and_answer(entries, outputs, facts) {
            self.largest_ok = self.largest_ok.max(items);
        } else {
            self.failed += total;
        }
    }
}

/// Splits requests into two runs of about half the items each (the second
/// is empty when there is a single request).
fn halves(mut entries: Vec<InferRequest>) -> (Vec<InferRequest>, Vec<InferRequest>) {
    let total: usize = entries.iter().map(|e| e.items).sum();
    let mut items = 0;
    let mut at = entries.len();
    for (index, entry) in entries.iter().enumerate() {
        if index > 0 && items + entry.items > total / 2 {
            at = index;
            break;
        }
        items += entry.items;
    }
    let second = entries.split_off(at);
    (entries, second)
}

/// Joins the outputs of two runs along the batch dimension.
fn join_rows(first: Vec<Tensor>, second: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
    first
        .iter()
        .zip(&second)
        .map(|(a, b)| {
            let joinable =
                a.dtype == b.dtype && !a.shape.is_empty() && a.shape.get(1..) == b.shape.get(1..);
            if !joinable {
                return Err(EngineError::Run(format!(
                    "outputs of shapes {:?} and {:?} cannot be joined along the batch dimension",
                    a.shape, b.shape
                )));
            }
            Ok(Tensor::concat_batch(&[a, b]))
        })
        .collect()
}

/// Stacks each input of every entry along the batch dimension.
fn stack_inputs(entries: &[InferRequest]) -> Vec<Tensor> {
    if entries.len() == 1 {
        return entries[0].inputs.clone();
    }
    (0..entries[0].inputs.len())
        .map(|i| {
            let parts: Vec<&Tensor> = entries.iter().map(|e| &e.inputs[i]).collect();
            Tensor::concat_batch(&parts)
        })
        .collect()
}

/// Splits every output back into the entries' rows and answers each entry.
/// What every request of a batch is told about it.
struct BatchFacts<'a> {
    model: &'a str,
    batch_id: u64,
    replica: usize,
    batch_size: usize,
    started: Instant,
    inference_ms: f64,
}

fn split_and_answer(entries: Vec<InferRequest>, outputs: Vec<Tensor>, facts: BatchFacts) -> bool {
    let BatchFacts {
        model,
        batch_id,
        replica,
        batch_size,
        started,
        inference_ms,
    } = facts;
    let outcome = |entry: &InferRequest, outputs: Vec<Tensor>| {
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
        }
    };
    if entries.len() == 1 {
        let entry = entries.into_iter().next().expect("one entry");
        let result = outcome(&entry, outputs);
        entry.answer(Ok(result));
        return true;
    }
    let rows: Vec<usize> = entries.iter().map(|e| e.items).collect();
    let mut per_entry: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); entries.len()];
    for output in outputs {
        let shape = output.shape.clone();
        let Some(parts) = output.split_batch(&rows) else {
            let why = format!(
                "output of shape {shape:?} cannot be split into the batch's {batch_size} rows"
            );
            answer_all(entries, InferError::Inference(why));
            return false;
        };
        for (slot, part) in per_entry.iter_mut().zip(parts) {
            slot.push(part);
        }
    }
    for (entry, outputs) in entries.into_iter().zip(per_entry) {
        let result = outcome(&entry, outputs);
        entry.answer(Ok(result));
    }
    true
}

fn answer_all(entries: Vec<InferRequest>, error: InferError) {
    for entry in entries {
        entry.answer(Err(error.clone()));
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
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
            enqueued: now,
            span: tracing::Span::none(),
            reply,
        };
        (request, answer)
    }

    fn run(engine: &mut dyn Engine, entries: Vec<InferRequest>) -> (usize, Option<usize>, usize) {
        let mut run = SplitRun {
            engine,
            model: "m",
            batch_id: 0,
            replica: 0,
            largest_ok: 0,
            ran_out: None,
            panicked: None,
            failed: 0,
        };
        run.batch(entries);
        (run.largest_ok, run.ran_out, run.failed)
    }

    #[test]
    fn a_batch_that_runs_out_of_memory_is_split_down_to_what_fits() {
        let mut factory = FakeEngineFactory::vector(4);
        factory.fail_above = Some(2);
        let mut engine = factory.load().unwrap();
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
        let mut engine = factory.load().unwrap();
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
