//! A deterministic engine for tests: FP32 outputs are `2x + 1` of the
//! matching input, with a configurable delay per batch and per item, an
//! optional out-of-memory failure above a batch size, and optionally a
//! memory use per item that it reports as if measured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Engine, EngineFactory, EngineProvider, LoadTarget};
use crate::device::GpuSupport;
use crate::error::EngineError;
use crate::repository::ModelSpec;
use crate::signature::{ModelSignature, TensorSpec};
use crate::tensor::{DataType, Tensor};

/// How fake engines behave; every replica of a model shares one.
#[derive(Debug, Clone)]
pub struct FakeEngineFactory {
    pub signature: ModelSignature,
    pub batch_delay: Duration,
    pub item_delay: Duration,
    /// Batches larger than this fail with [`EngineError::OutOfMemory`].
    pub fail_above: Option<usize>,
    /// A batch holding this FP32 value anywhere fails with a run error, so a
    /// test can make one request fail without touching warmup.
    pub poison: Option<f32>,
    /// When set, every run reports a peak memory of 100 MB plus this much
    /// per item, as an engine that can measure its memory would.
    pub memory_per_item_mb: Option<u64>,
    /// When set, each live engine holds this many MB of its device's
    /// memory (`resident`, from 100 MB), which the factory and the engines
    /// report as measurable memory: what a replica's load adds is this.
    pub footprint_mb: Option<u64>,
    /// The device memory in use: 100 MB plus every live engine's footprint.
    pub resident: Arc<std::sync::atomic::AtomicU64>,
    /// The batch size of every `infer` call (warmup included), in order.
    pub batch_sizes: Arc<Mutex<Vec<usize>>>,
    /// Counts `load` calls, so tests can see replicas start.
    pub loads: Arc<AtomicUsize>,
    /// Where each `load` was asked to run, in order.
    pub targets: Arc<Mutex<Vec<LoadTarget>>>,
    /// The first this-many `load` calls fail (to test restarts).
    pub failing_loads: usize,
    /// The first `load` call panics (to test supervision of loading).
    pub panic_on_first_load: bool,
    /// A batch holding this FP32 value makes the engine panic (to test
    /// supervision).
    pub panic_on: Option<f32>,
    /// How long each `load` takes.
    pub load_delay: Duration,
    /// When set, every engine of this factory runs on one device one batch
    /// at a time (as sessions sharing one CPU thread pool do): a second
    /// replica adds no throughput.
    pub one_device: Option<Arc<Mutex<()>>>,
}

impl FakeEngineFactory {
    /// `x: FP32 [-1, width]` to `y: FP32 [-1, width]`, no delay.
    pub fn vector(width: usize) -> Self {
        let spec = |name: &str| TensorSpec::new(name, DataType::Fp32, vec![None, Some(width)]);
        FakeEngineFactory {
            signature: ModelSignature {
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
                unbatched: false,
            },
            batch_delay: Duration::ZERO,
            item_delay: Duration::ZERO,
            fail_above: None,
            poison: None,
            memory_per_item_mb: None,
            footprint_mb: None,
            resident: Arc::new(std::sync::atomic::AtomicU64::new(100)),
            batch_sizes: Arc::default(),
            loads: Arc::default(),
            targets: Arc::default(),
            failing_loads: 0,
            panic_on_first_load: false,
            panic_on: None,
            load_delay: Duration::ZERO,
            one_device: None,
        }
    }

    /// Engines that each hold `mb` of measurable memory.
    pub fn with_footprint(mut self, mb: u64) -> Self {
        self.footprint_mb = Some(mb);
        self
    }

    pub fn with_delay(mut self, batch: Duration, item: Duration) -> Self {
        self.batch_delay = batch;
        self.item_delay = item;
        self
    }
}

impl EngineFactory for FakeEngineFactory {
    fn load(&self, target: &LoadTarget) -> Result<Box<dyn Engine>, EngineError> {
        if let Ok(mut targets) = self.targets.lock() {
            targets.push(*target);
        }
        let earlier = self.loads.fetch_add(1, Ordering::SeqCst);
        if !self.load_delay.is_zero() {
            std::thread::sleep(self.load_delay);
        }
        assert!(
            !(self.panic_on_first_load && earlier == 0),
            "fake engine panics while loading"
        );
        if earlier < self.failing_loads {
            return Err(EngineError::Load(format!(
                "fake load {} of {} fails",
                earlier + 1,
                self.failing_loads
            )));
        }
        if let Some(mb) = self.footprint_mb {
            self.resident.fetch_add(mb, Ordering::SeqCst);
        }
        Ok(Box::new(FakeEngine {
            config: self.clone(),
            last_items: 0,
            mapped: target.map_weights,
        }))
    }

    fn device_memory_mb(&self, _device: crate::device::Device) -> Option<u64> {
        self.footprint_mb
            .map(|_| self.resident.load(Ordering::SeqCst))
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        if let Some(mb) = self.config.footprint_mb {
            self.config.resident.fetch_sub(mb, Ordering::SeqCst);
        }
    }
}

struct FakeEngine {
    config: FakeEngineFactory,
    /// Items of the last run, for its reported memory.
    last_items: usize,
    /// Loaded to map its weights (a load on demand): it says so, as the
    /// ONNX Runtime engine does, though it holds no weights.
    mapped: bool,
}

impl Engine for FakeEngine {
    fn signature(&self) -> &ModelSignature {
        &self.config.signature
    }

    fn maps_weights(&self) -> bool {
        self.mapped
    }

    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let items = inputs.first().and_then(Tensor::batch_len).unwrap_or(1);
        if let Ok(mut sizes) = self.config.batch_sizes.lock() {
            sizes.push(items);
        }
        self.last_items = items;
        if self.config.fail_above.is_some_and(|cap| items > cap) {
            return Err(EngineError::OutOfMemory(format!(
                "fake engine refuses batches above {}",
                self.config.fail_above.unwrap_or_default()
            )));
        }
        if let Some(trigger) = self.config.panic_on {
            let hit = inputs
                .iter()
                .filter_map(Tensor::to_f32)
                .any(|v| v.contains(&trigger));
            assert!(!hit, "fake engine panics on the value {trigger}");
        }
        if let Some(poison) = self.config.poison {
            let poisoned = inputs
                .iter()
                .filter_map(Tensor::to_f32)
                .any(|values| values.contains(&poison));
            if poisoned {
                return Err(EngineError::Run(format!(
                    "fake engine refuses the value {poison}"
                )));
            }
        }
        let delay = self.config.batch_delay + self.config.item_delay * items as u32;
        let _turn = self
            .config
            .one_device
            .as_ref()
            .map(|device| device.lock().unwrap_or_else(|e| e.into_inner()));
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let outputs = (0..self.config.signature.outputs.len())
            .map(|k| transform(&inputs[k % inputs.len()]))
            .collect();
        Ok(outputs)
    }

    fn memory_in_use_mb(&self) -> Option<u64> {
        let items = self.last_items as u64;
        match (self.config.footprint_mb, self.config.memory_per_item_mb) {
            (Some(_), per_item) => {
                Some(self.config.resident.load(Ordering::SeqCst) + per_item.unwrap_or(0) * items)
            }
            (None, per_item) => Some(100 + per_item? * items),
        }
    }
}

fn transform(input: &Tensor) -> Tensor {
    match input.to_f32() {
        Some(values) => {
            let out: Vec<f32> = values.iter().map(|v| v * 2.0 + 1.0).collect();
            Tensor::from_f32(input.shape.clone(), &out).expect("same shape, same length")
        }
        None => input.clone(),
    }
}

/// Serves every model of the repository with fake engines: the one named for
/// it in `per_model`, else `default`.
#[derive(Debug, Clone)]
pub struct FakeProvider {
    pub default: FakeEngineFactory,
    pub per_model: HashMap<String, FakeEngineFactory>,
    /// What it says about GPUs: fake engines "run" anywhere they are put,
    /// so a test with a fixed GPU inventory can set this to `Ok(())`.
    pub gpu_support: GpuSupport,
}

impl FakeProvider {
    pub fn new(default: FakeEngineFactory) -> Self {
        FakeProvider {
            default,
            per_model: HashMap::new(),
            gpu_support: Err("fake engines are told to use the CPU".into()),
        }
    }
}

impl EngineProvider for FakeProvider {
    fn factory(&self, spec: &ModelSpec) -> Arc<dyn EngineFactory> {
        let config = self.per_model.get(&spec.name).unwrap_or(&self.default);
        Arc::new(config.clone())
    }

    fn gpu_support(&self) -> GpuSupport {
        self.gpu_support.clone()
    }
}
