//! Loading a replica's engine and measuring what it takes: the memory its
//! device has in use before the load and after the load and warmup at batch
//! size 1, with no other load running in the process ([`LOAD_GATE`]);
//! warmup's run times go with it, for the batcher's run profile.

use std::time::{Duration, Instant};

use tracing::info;

use super::allocator::give_freed_memory_back;
use super::warmup::warm_up;
use super::Replica;
use crate::error::EngineError;
use crate::signature::ModelSignature;
use crate::tensor::DataType;

/// A load that measures runs alone in the process (it holds the gate for
/// writing), so that what the memory in use grows by during it is that
/// replica's alone; loads that do not measure run side by side (they hold
/// it for reading) but never beside a measurement.
static LOAD_GATE: parking_lot::RwLock<()> = parking_lot::RwLock::new(());

/// Longest a load waits for [`LOAD_GATE`]; past it, it loads beside the
/// others, unmeasured, so one load that hangs cannot hold every other back.
const LOAD_GATE_WAIT: Duration = Duration::from_secs(30);

/// Engines dropped in the process so far: a measurement during which one
/// was dropped (its memory given back) is discarded.
static ENGINES_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a load measured: the signature, the MB one more item in a batch
/// needs, and the MB the loaded and warmed engine holds (both where the
/// engine's device memory can be read).
pub(super) struct Loaded {
    pub(super) signature: ModelSignature,
    pub(super) mb_per_item: Option<u64>,
    pub(super) footprint_mb: Option<u64>,
    /// Its weights are mapped from a file ([`Engine::maps_weights`]).
    ///
    /// [`Engine::maps_weights`]: crate::engine::Engine::maps_weights
    pub(super) weights_mapped: bool,
    /// The last warmup round's runs: batch size and time.
    pub(super) warmup_runs: Vec<(usize, Duration)>,
}

impl Replica {
    /// Loads and warms the engine: `warmup` inferences at batch size 1 and,
    /// for a batched model, as many at its cap. Returns the signature and,
    /// where the device's memory can be read, the MB one item needs and the
    /// engine's footprint (its growth through the load and the batch-1
    /// warmup, measured while no other replica loads).
    pub(super) fn load(&mut self, measure: bool) -> Result<Loaded, EngineError> {
        // A measurement waits until no other load runs; every other load
        // whose memory can be read waits while one does (it would blur
        // it); loads whose memory cannot be read run freely.
        let measurable = self.factory.device_memory_mb(self.target.device).is_some();
        let alone = (measurable && measure)
            .then(|| LOAD_GATE.try_write_for(LOAD_GATE_WAIT))
            .flatten();
        let _beside = (measurable && !measure)
            .then(|| LOAD_GATE.try_read_for(LOAD_GATE_WAIT))
            .flatten();
        let measure = measure && alone.is_some();
        let started = Instant::now();
        let dropped = ENGINES_DROPPED.load(std::sync::atomic::Ordering::SeqCst);
        let before = self
            .factory
            .device_memory_mb(self.target.device)
            .filter(|_| measure);
        let mut engine = self.factory.load(&self.target)?;
        let mut loaded_mb = engine.memory_in_use_mb();
        let signature = engine.signature().clone();
        let cap = if signature.is_batched() {
            self.max_batch_size.max(1)
        } else {
            1
        };
        let mut peaks = (None, None);
        let mut warmup_runs = Vec::new();
        // The model's own samples, when it gives any, in place of zeros.
        let samples = self.factory.warmup_samples();
        for sample in samples {
            let failed =
                |why: String| EngineError::Load(format!("model_warmup '{}' {why}", sample.name));
            let inputs = sample.tensors(&signature).map_err(failed)?;
            for _ in 0..sample.count.max(1) {
                let run = Instant::now();
                engine
                    .infer(&inputs)
                    .map_err(|e| failed(format!("failed: {e}")))?;
                if signature.is_batched() {
                    warmup_runs.push((sample.batch_size.max(1), run.elapsed()));
                }
            }
        }
        // Made-up text can break a model that reads it (a number parsed
        // from it, a vocabulary looked up): such a model is not warmed up.
        let rounds = if !samples.is_empty() {
            0
        } else if signature
            .inputs
            .iter()
            .any(|s| s.dtype == DataType::Bytes && !s.optional)
        {
            if self.warmup > 0 {
                info!(
                    model = %self.model,
                    replica = self.id,
                    "warmup skipped: the model takes text, which made-up values could fail"
                );
            }
            0
        } else {
            self.warmup
        };
        for round in 0..rounds {
            warmup_runs.clear();
            let run = Instant::now();
            warm_up(engine.as_mut(), &signature, 1)?;
            warmup_runs.push((1, run.elapsed()));
            peaks.0 = engine.memory_in_use_mb();
            // The first round only: later ones follow a run at the cap,
            // whose memory the runtime keeps.
            if round == 0 {
                loaded_mb = loaded_mb.max(peaks.0);
            }
            if cap > 1 {
                let run = Instant::now();
                warm_up(engine.as_mut(), &signature, cap)?;
                warmup_runs.push((cap, run.elapsed()));
                peaks.1 = engine.memory_in_use_mb();
            }
        }
        let mb_per_item = match peaks {
            (Some(one), Some(full)) if full > one => Some((full - one).div_ceil(cap as u64 - 1)),
            _ => None,
        };
        let undisturbed = ENGINES_DROPPED.load(std::sync::atomic::Ordering::SeqCst) == dropped;
        let footprint_mb = before
            .zip(loaded_mb)
            .filter(|_| undisturbed)
            .map(|(before, after)| after.saturating_sub(before).max(1));
        info!(
            model = %self.model,
            replica = self.id,
            device = %self.target.device,
            load_ms = started.elapsed().as_millis() as u64,
            warmup_batch_sizes = ?[1, cap],
            mb_per_item,
            footprint_mb,
            reserved_mb = self.target.memory_mb,
            "replica ready"
        );
        let weights_mapped = engine.maps_weights();
        *self.engine.lock() = Some(engine);
        Ok(Loaded {
            signature,
            mb_per_item,
            footprint_mb,
            weights_mapped,
            warmup_runs,
        })
    }

    /// Drops the engine, if any, noting it so that a footprint measured
    /// meanwhile is discarded.
    pub(super) fn drop_engine(&mut self) {
        // Taken out under the lock (a worker running on it finishes
        // first), dropped once the lock is free.
        let dropped = self.engine.lock().take();
        if let Some(engine) = dropped {
            drop(engine);
            ENGINES_DROPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            give_freed_memory_back();
        }
    }
}
