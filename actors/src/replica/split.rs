//! Running one batch with out-of-memory recovery: a (sub-)batch that runs
//! out of memory is split in halves and each half retried, down to single
//! requests, and a request of several items down to single rows.

use super::*;

/// Runs one batch on the engine and answers its requests; a (sub-)batch
/// that runs out of memory is split in halves and each half retried.
pub(super) struct SplitRun<'a> {
    pub(super) engine: &'a mut dyn Engine,
    pub(super) model: &'a str,
    pub(super) batch_id: u64,
    pub(super) replica: usize,
    /// Items of the largest (sub-)batch that ran.
    pub(super) largest_ok: usize,
    /// Items of the first (sub-)batch that ran out of memory.
    pub(super) ran_out: Option<usize>,
    /// Why the engine panicked; nothing more runs on it.
    pub(super) panicked: Option<String>,
    /// Why its device failed; nothing more runs on it either.
    pub(super) device_failed: Option<String>,
    /// Items whose requests were answered with an error.
    pub(super) failed: usize,
    /// Failures that were the engine's fault (not out of memory, not inputs
    /// the runtime rejected).
    pub(super) faults: usize,
    /// Time spent stacking inputs, in the engine, and splitting outputs,
    /// over every (sub-)batch.
    pub(super) input_time: Duration,
    pub(super) infer_time: Duration,
    pub(super) output_time: Duration,
    /// Every request's answer, sent by [`Replies::send`] once the batcher
    /// has been told the batch is done (so that what it counts is never
    /// behind what a client already got).
    pub(super) replies: Replies,
}

impl<'a> SplitRun<'a> {
    /// A run of batch `batch_id` on `engine`, nothing counted yet.
    pub(super) fn new(
        engine: &'a mut dyn Engine,
        model: &'a str,
        batch_id: u64,
        replica: usize,
    ) -> Self {
        SplitRun {
            engine,
            model,
            batch_id,
            replica,
            largest_ok: 0,
            ran_out: None,
            panicked: None,
            device_failed: None,
            failed: 0,
            faults: 0,
            input_time: Duration::ZERO,
            infer_time: Duration::ZERO,
            output_time: Duration::ZERO,
            replies: Replies::default(),
        }
    }

    pub(super) fn batch(&mut self, entries: Vec<InferRequest>) {
        let items: usize = entries.iter().map(|e| e.items).sum();
        let started = Instant::now();
        let result = match (&self.panicked, &self.device_failed) {
            (Some(why), _) => Err(EngineError::Run(format!("engine panicked: {why}"))),
            (None, Some(why)) => Err(EngineError::Run(format!("the device failed: {why}"))),
            (None, None) => {
                let inputs = stack_inputs(&entries);
                let stacked = started.elapsed();
                self.input_time += stacked;
                self.infer(&inputs).map(|outputs| (outputs, stacked))
            }
        };
        match result {
            Ok((outputs, stacked)) => self.answer(entries, outputs, items, started, stacked),
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
                match e {
                    EngineError::OutOfMemory(_) => {
                        self.ran_out.get_or_insert(items);
                    }
                    EngineError::Rejected(_) => {}
                    EngineError::Run(_) | EngineError::Load(_) => self.faults += 1,
                    EngineError::Device(ref why) => {
                        self.faults += 1;
                        self.device_failed.get_or_insert_with(|| why.clone());
                    }
                }
                warn!(error = %e, batch_size = items, "batch failed");
                self.failed += items;
                self.replies
                    .fail_all(entries, InferError::Inference(e.to_string()));
            }
        }
    }

    /// One request of several items that ran out of memory on its own: its
    /// rows run in halves, and it gets the joined outputs.
    fn rows(&mut self, entry: InferRequest) {
        let started = Instant::now();
        match self.split_rows(entry.inputs.clone(), entry.items) {
            Ok((outputs, largest)) => {
                self.answer(vec![entry], outputs, largest, started, Duration::ZERO)
            }
            Err(e) => {
                warn!(error = %e, batch_size = entry.items, "request failed");
                self.failed += entry.items;
                self.replies
                    .push(entry, Err(InferError::Inference(e.to_string())));
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
            if input.is_absent() {
                first.push(input.clone());
                second.push(input);
                continue;
            }
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
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| engine.infer(inputs)));
        self.infer_time += started.elapsed();
        match result {
            Ok(result) => result,
            Err(panic) => {
                let why = panic_message(&panic);
                self.panicked = Some(why.clone());
                Err(EngineError::Run(format!("engine panicked: {why}")))
            }
        }
    }

    /// Answers the requests of a (sub-)batch of `items` that ran, started
    /// at `started` with `stacked` spent stacking its inputs.
    fn answer(
        &mut self,
        entries: Vec<InferRequest>,
        outputs: Vec<Tensor>,
        items: usize,
        started: Instant,
        stacked: Duration,
    ) {
        let inference_ms = started.elapsed().saturating_sub(stacked).as_secs_f64() * 1000.0;
        debug!(inference_ms, batch_size = items, "batch ran");
        let total: usize = entries.iter().map(|e| e.items).sum();
        let facts = BatchFacts {
            model: self.model,
            batch_id: self.batch_id,
            replica: self.replica,
            batch_size: items,
            started,
            inference_ms,
            input_ms: stacked.as_secs_f64() * 1000.0,
        };
        let splitting = Instant::now();
        let answered = split_and_answer(entries, outputs, facts, &mut self.replies);
        self.output_time += splitting.elapsed();
        if answered {
            self.largest_ok = self.largest_ok.max(items);
        } else {
            self.failed += total;
        }
    }
}

/// Answers held until they may be sent.
#[derive(Default)]
pub(super) struct Replies(Vec<(InferRequest, Result<InferOutcome, InferError>)>);

impl Replies {
    pub(super) fn push(&mut self, entry: InferRequest, result: Result<InferOutcome, InferError>) {
        self.0.push((entry, result));
    }

    pub(super) fn fail_all(&mut self, entries: Vec<InferRequest>, error: InferError) {
        for entry in entries {
            self.push(entry, Err(error.clone()));
        }
    }

    /// Sends every answer held, in the order they were given.
    pub(super) fn send(&mut self) {
        for (entry, result) in self.0.drain(..) {
            entry.answer(result);
        }
    }
}

impl Drop for Replies {
    /// Whatever happens to the batch (a panic unwinding through the
    /// replica's handler included), every answer held is sent.
    fn drop(&mut self) {
        self.send();
    }
}

/// Splits requests into two runs of about half the items each (the second
/// is empty when there is a single request).
pub(super) fn halves(mut entries: Vec<InferRequest>) -> (Vec<InferRequest>, Vec<InferRequest>) {
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
pub(super) fn join_rows(
    first: Vec<Tensor>,
    second: Vec<Tensor>,
) -> Result<Vec<Tensor>, EngineError> {
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
