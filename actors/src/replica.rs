//! A replica: one engine on one thread of its own (an actix `SyncArbiter`
//! of size one), so blocking inference never runs on the async arbiters.
//!
//! It loads and warms its engine when it starts, runs the batches its batcher
//! sends, answers each request of the batch through that request's own reply
//! channel, and tells the batcher when a batch is done.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Addr, Handler, SyncContext};
use tracing::{debug, error, info, info_span, warn};

use crate::batcher::Batcher;
use crate::engine::{Engine, EngineFactory};
use crate::error::{EngineError, InferError};
use crate::messages::{
    BatchDone, InferOutcome, InferRequest, ReplicaFailed, ReplicaReady, RunBatch,
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
    ) -> Addr<Replica> {
        actix::SyncArbiter::start(1, move || Replica {
            id,
            model: model.clone(),
            factory: factory.clone(),
            warmup,
            engine: None,
            batcher: batcher.clone(),
            observer: observer.clone(),
        })
    }

    fn load(&mut self) -> Result<ModelSignature, EngineError> {
        let started = Instant::now();
        let mut engine = self.factory.load()?;
        let signature = engine.signature().clone();
        for _ in 0..self.warmup {
            warm_up(engine.as_mut(), &signature)?;
        }
        info!(
            model = %self.model,
            replica = self.id,
            load_ms = started.elapsed().as_millis() as u64,
            "replica ready"
        );
        self.engine = Some(engine);
        Ok(signature)
    }

    fn report_load(&mut self) {
        match self.load() {
            Ok(signature) => self.batcher.do_send(ReplicaReady {
                replica: self.id,
                signature,
            }),
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

/// One inference on zeros at batch size 1. Models whose non-batch dimensions
/// are dynamic get size 1 there, which not every model accepts: for those a
/// failed warmup is only logged.
fn warm_up(engine: &mut dyn Engine, signature: &ModelSignature) -> Result<(), EngineError> {
    let fully_static = signature
        .inputs
        .iter()
        .all(|s| s.dims.iter().skip(1).all(Option::is_some));
    let inputs: Vec<Tensor> = signature
        .inputs
        .iter()
        .map(|s| Tensor::zeros(s.dtype, s.dims.iter().map(|d| d.unwrap_or(1)).collect()))
        .collect();
    match engine.infer(&inputs) {
        Ok(_) => Ok(()),
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
        let inputs = stack_inputs(&msg.entries);
        let result = catch_unwind(AssertUnwindSafe(|| engine.infer(&inputs)));
        let inference = started.elapsed();
        let inference_ms = inference.as_secs_f64() * 1000.0;
        let ok = match result {
            Ok(Ok(outputs)) => {
                debug!(inference_ms, "batch ran");
                split_and_answer(
                    msg.entries,
                    outputs,
                    BatchFacts {
                        model: &self.model,
                        batch_id: msg.batch_id,
                        replica: self.id,
                        batch_size: items,
                        started,
                        inference_ms,
                    },
                )
            }
            Ok(Err(e)) => {
                warn!(error = %e, "batch failed");
                answer_all(msg.entries, InferError::Inference(e.to_string()));
                false
            }
            Err(panic) => {
                let why = panic_message(&panic);
                error!(error = %why, "engine panicked; reloading the replica");
                answer_all(
                    msg.entries,
                    InferError::Inference(format!("engine panicked: {why}")),
                );
                self.engine = None;
                self.report_load();
                false
            }
        };
        self.observer
            .batch_finished(&self.model, self.id, items, inference, ok);
        self.batcher.do_send(BatchDone {
            replica: self.id,
            items,
            ok,
        });
    }
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
