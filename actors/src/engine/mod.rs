//! The `Engine` trait: one loaded model that runs batches, synchronously, on
//! the thread of the replica that owns it. ONNX Runtime is one implementation;
//! a deterministic fake lets tests control timing and failures.

pub mod checked;
pub mod compute_priority;
pub mod fake;
pub mod mapped_weights;
pub mod onnx;
mod onnx_runtime;
mod onnx_strings;
pub mod pool_gate;
mod runtime_prime;

use std::sync::Arc;

use crate::device::Device;
use crate::error::EngineError;
use crate::repository::ModelSpec;
use crate::signature::ModelSignature;
use crate::tensor::Tensor;
use crate::warmup_sample::WarmupSample;

/// A loaded model. `infer` gets the inputs in signature order, each stacked
/// along the batch dimension, and returns the outputs in signature order.
pub trait Engine: Send {
    fn signature(&self) -> &ModelSignature;
    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError>;

    /// Whether its weights are mapped from a file rather than held in the
    /// process's memory (see [`mapped_weights`]); `false` by default.
    fn maps_weights(&self) -> bool {
        false
    }

    /// Memory in use on the engine's device, in MB, where the engine can
    /// measure it; `None` where it cannot. Warmup reads it right after its
    /// runs at batch 1 and at the cap to learn the memory one item needs.
    fn memory_in_use_mb(&self) -> Option<u64> {
        None
    }
}

/// Where one replica's engine runs, as its reservation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadTarget {
    pub device: Device,
    /// MB the budget reserved for it there; a GPU engine limits its memory
    /// arena to it, so one model cannot take another's memory (0: no limit).
    pub memory_mb: u64,
    /// Map the model's weights from a split copy (see
    /// [`mapped_weights`]): asked for replicas loaded on demand.
    pub map_weights: bool,
}

impl LoadTarget {
    /// The CPU, with no memory limit of its own.
    pub fn cpu() -> LoadTarget {
        LoadTarget {
            device: Device::Cpu,
            memory_mb: 0,
            map_weights: false,
        }
    }
}

/// Loads engines for one model; each replica calls `load` on its own thread.
pub trait EngineFactory: Send + Sync {
    fn load(&self, target: &LoadTarget) -> Result<Box<dyn Engine>, EngineError>;

    /// Memory in use on `device` now, in MB, where the factory can measure
    /// it (the process's resident set on the CPU, NVML's used memory on a
    /// GPU); `None` where it cannot. A replica reads it before it loads:
    /// what its load and warmup add is its footprint.
    fn device_memory_mb(&self, device: Device) -> Option<u64> {
        let _ = device;
        None
    }

    /// The model's own warmup samples (Triton's `model_warmup`), which a
    /// replica runs in place of its warmup on zeros; none by default.
    fn warmup_samples(&self) -> &[WarmupSample] {
        &[]
    }
}

/// Chooses the engine factory for a model of the repository.
pub trait EngineProvider: Send + Sync {
    fn factory(&self, spec: &ModelSpec) -> Arc<dyn EngineFactory>;

    /// Whether engines can run on a GPU at all; `Err` names what is missing.
    fn gpu_support(&self) -> crate::device::GpuSupport {
        Err("this engine runs on the CPU only".into())
    }

    /// Reads the process's resident memory, where the engines' CPU memory
    /// is the process's own (ONNX Runtime): the budget then shows the
    /// process's growth beside the CPU's reservations. `None` (the
    /// default) where it is not (the fake engine of tests).
    fn process_memory(&self) -> Option<crate::memory::process_growth::ResidentReader> {
        None
    }
}
