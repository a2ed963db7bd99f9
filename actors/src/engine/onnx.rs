//! The ONNX Runtime engine: one `ort` session per replica, loaded from the
//! model repository, run on the replica's own thread, on the CPU or on GPU
//! `n` through the CUDA execution provider.
//!
//! The runtime library is loaded dynamically (`load-dynamic`) from a path the
//! application resolves; [`init_runtime`] must succeed once before any engine
//! loads. It creates ONNX Runtime's global thread pools, sized to the cores:
//! every session runs its operators there (a lone request gets every core,
//! concurrent batches share them; long runs take turns, see
//! [`super::pool_gate`]), unless its model sets `intra_op_threads`, which
//! gives each of its sessions a pool of its own. GPUs need the GPU build
//! (PyPI's `onnxruntime-gpu`), whose CUDA provider library sits next to it
//! and loads CUDA and cuDNN itself.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ort::ep::{ArenaExtendStrategy, CUDA};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{
    DynValue, PrimitiveTensorElementType, Tensor as OrtTensor, TensorElementType, TensorRef,
    ValueType,
};

use super::mapped_weights;
use super::onnx_runtime::environment;
pub use super::onnx_runtime::{
    cuda_support, init_runtime, runtime_primed, shared_pool_threads, RuntimeThreads,
    CUDA_PROVIDER_LIBRARY,
};
use super::pool_gate::{RunLength, POOL_GATE};
use super::{Engine, EngineFactory, EngineProvider, LoadTarget};
use crate::device::Device;
use crate::error::EngineError;
use crate::memory::process_growth::resident_mb;
use crate::repository::ModelSpec;
use crate::signature::{ModelSignature, TensorSpec};
use crate::tensor::{DataType, Tensor};

/// Serves every model with ONNX Runtime, on the CPU or a GPU.
#[derive(Debug, Default)]
pub struct OnnxProvider;

impl EngineProvider for OnnxProvider {
    fn factory(&self, spec: &ModelSpec) -> Arc<dyn EngineFactory> {
        Arc::new(OnnxFactory {
            path: spec.onnx_path.clone(),
            label: spec.file_label(),
            sha256: spec.sha256.clone(),
            intra_op_threads: spec.settings.intra_op_threads,
            warmup_samples: spec.settings.warmup_samples.clone(),
            optional_inputs: spec.settings.optional_inputs.clone(),
        })
    }

    fn gpu_support(&self) -> crate::device::GpuSupport {
        cuda_support()
    }

    fn process_memory(&self) -> Option<crate::memory::process_growth::ResidentReader> {
        Some(resident_mb)
    }
}

/// Opens sessions of one `.onnx` file.
#[derive(Debug)]
pub struct OnnxFactory {
    pub path: PathBuf,
    /// How errors name the file (`model/model.onnx`: the path within the
    /// repository, not where the server keeps it).
    pub label: String,
    /// The file's SHA-256, naming its split copy (see [`mapped_weights`]).
    pub sha256: String,
    /// A pool of this many threads for each session; `None` shares the
    /// process's pool.
    pub intra_op_threads: Option<usize>,
    /// The model's own warmup samples, if it gives any.
    pub warmup_samples: Vec<crate::warmup_sample::WarmupSample>,
    /// Inputs a request may leave out: graph inputs, or initializers the
    /// graph lets a caller override (ONNX Runtime lists those apart).
    pub optional_inputs: Vec<String>,
}

impl EngineFactory for OnnxFactory {
    fn device_memory_mb(&self, device: Device) -> Option<u64> {
        match device {
            Device::Cpu => resident_mb(),
            Device::Gpu(index) => gpu_used_mb(index),
        }
    }

    fn warmup_samples(&self) -> &[crate::warmup_sample::WarmupSample] {
        &self.warmup_samples
    }

    fn load(&self, target: &LoadTarget) -> Result<Box<dyn Engine>, EngineError> {
        let env = environment()
            .ok_or_else(|| EngineError::Load("ONNX Runtime is not initialised".into()))?;
        let path = &self.label;
        // ONNX Runtime's own messages name the file by its full path.
        let full = self.path.display().to_string();
        let relabel = |e: &dyn std::fmt::Display| e.to_string().replace(&full, path);
        let load = |e: ort::Error<ort::session::builder::SessionBuilder>| {
            EngineError::Load(format!("{path}: {}", relabel(&e)))
        };
        let mut builder = Session::builder(env)
            .map_err(|e| EngineError::Load(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(load)?;
        // On a GPU the weights go to the device whatever the host holds.
        let map = target.map_weights && target.device == Device::Cpu;
        let (file, mapped) = mapped_weights::file_to_load(&self.path, &self.sha256, map);
        if mapped {
            // Prepacking would copy the mapped weights back into memory.
            builder = builder
                .with_config_entry("session.disable_prepacking", "1")
                .map_err(load)?;
        }
        if let Some(threads) = self.intra_op_threads {
            builder = builder
                .with_independent_thread_pool()
                .map_err(load)?
                .with_intra_threads(threads)
                .map_err(load)?
                .with_inter_threads(1)
                .map_err(load)?;
        }
        if let Device::Gpu(index) = target.device {
            let device_id = i32::try_from(index)
                .map_err(|_| EngineError::Load(format!("GPU index {index} is out of range")))?;
            // The arena may take what the budget reserved, and no more: one
            // model cannot take another's memory. Growing by what is asked
            // (not powers of two) keeps it from overshooting the limit.
            let mut cuda = CUDA::default()
                .with_device_id(device_id)
                .with_arena_extend_strategy(ArenaExtendStrategy::SameAsRequested);
            if target.memory_mb > 0 {
                cuda =
                    cuda.with_memory_limit((target.memory_mb as usize).saturating_mul(1024 * 1024));
            }
            let cuda = cuda.build().error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| {
                EngineError::Load(format!(
                    "{path}: the CUDA execution provider did not start on GPU {index}: {}",
                    relabel(&e)
                ))
            })?;
        }
        let session = builder
            .commit_from_file(&file)
            .map_err(|e| EngineError::Load(format!("{path}: {}", relabel(&e))))?;
        let signature = ModelSignature {
            inputs: self.inputs_of(&session)?,
            outputs: specs(session.outputs().iter().map(|o| (o.name(), o.dtype())))?,
            unbatched: false,
        };
        Ok(Box::new(OnnxEngine {
            session,
            signature,
            device: target.device,
            shared_pool: target.device == Device::Cpu && self.intra_op_threads.is_none(),
            run_length: RunLength::default(),
            mapped,
        }))
    }
}

impl OnnxFactory {
    /// The session's inputs, and the optional ones the model's
    /// configuration names: a graph input marked so, or an initializer a
    /// caller may override (added after the graph's inputs).
    fn inputs_of(&self, session: &Session) -> Result<Vec<TensorSpec>, EngineError> {
        let mut inputs = specs(session.inputs().iter().map(|o| (o.name(), o.dtype())))?;
        let initializers = session.overridable_initializers();
        for name in &self.optional_inputs {
            if let Some(spec) = inputs.iter_mut().find(|s| s.name == *name) {
                spec.optional = true;
                continue;
            }
            let initializer = initializers
                .iter()
                .find(|i| i.name() == name)
                .ok_or_else(|| {
                    EngineError::Load(format!(
                        "{}: optional input '{name}' is neither an input of the model nor an initializer it lets a caller override",
                        self.label
                    ))
                })?;
            let mut spec =
                specs(std::iter::once((initializer.name(), initializer.dtype())))?.remove(0);
            spec.optional = true;
            inputs.push(spec);
        }
        Ok(inputs)
    }
}

fn specs<'a>(
    outlets: impl Iterator<Item = (&'a str, &'a ValueType)>,
) -> Result<Vec<TensorSpec>, EngineError> {
    outlets
        .map(|(name, value_type)| match value_type {
            ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec::new(
                name,
                from_ort(*ty).ok_or_else(|| {
                    EngineError::Load(format!(
                        "'{name}' has element type {ty:?}, which Gantry does not serve"
                    ))
                })?,
                shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
            )),
            other => Err(EngineError::Load(format!(
                "'{name}' is a {other}, Gantry serves tensors only"
            ))),
        })
        .collect()
}

fn from_ort(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// A loaded ONNX Runtime session.
pub struct OnnxEngine {
    session: Session,
    signature: ModelSignature,
    device: Device,
    /// Whether its runs use the process's shared CPU pool (and so take
    /// [`POOL_GATE`] when long).
    shared_pool: bool,
    run_length: RunLength,
    /// It loaded a split copy, its weights mapped from `weights.bin`.
    mapped: bool,
}

/// GPU `index`'s used memory in MB (NVML), opened once per process.
fn gpu_used_mb(index: u32) -> Option<u64> {
    static NVML: OnceLock<Option<nvml_wrapper::Nvml>> = OnceLock::new();
    let nvml = NVML
        .get_or_init(|| nvml_wrapper::Nvml::init().ok())
        .as_ref()?;
    let info = nvml.device_by_index(index).ok()?.memory_info().ok()?;
    Some(info.used / (1024 * 1024))
}

impl Engine for OnnxEngine {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let mut values = Vec::with_capacity(inputs.len());
        for (spec, tensor) in self.signature.inputs.iter().zip(inputs) {
            // A left-out optional input runs on the model's initializer.
            if !tensor.is_absent() {
                values.push((spec.name.as_str(), to_value(tensor).map_err(run_error)?));
            }
        }
        let items = inputs
            .iter()
            .find(|t| !t.is_absent())
            .and_then(Tensor::batch_len)
            .unwrap_or(1);
        let outputs = if self.shared_pool {
            let entered = POOL_GATE.enter(self.run_length.predict(items));
            let started = Instant::now();
            let outputs = self.session.run(values);
            self.run_length.record(items, started.elapsed());
            drop(entered);
            outputs
        } else {
            self.session.run(values)
        }
        .map_err(run_error)?;
        let mut result = Vec::with_capacity(self.signature.outputs.len());
        for spec in &self.signature.outputs {
            let value = outputs
                .get(spec.name.as_str())
                .ok_or_else(|| EngineError::Run(format!("output '{}' is missing", spec.name)))?;
            result.push(from_value(value, spec.dtype).map_err(run_error)?);
        }
        Ok(result)
    }

    fn maps_weights(&self) -> bool {
        self.mapped
    }

    /// ONNX Runtime's arena (on the CPU, and the CUDA provider's on a GPU)
    /// grows to fit the largest batch run so far and keeps that memory, so
    /// the memory in use after a run at batch N minus the one after batch 1
    /// estimates what N - 1 items need. It is the whole process's (or the
    /// whole GPU's), so other replicas loading at the same moment can only
    /// make the estimate larger (a smaller cap), never smaller.
    ///
    /// Read when asked (warmup asks right after its runs), not after every
    /// run: a file read or an NVML call per batch would cost every request.
    fn memory_in_use_mb(&self) -> Option<u64> {
        match self.device {
            Device::Cpu => resident_mb(),
            Device::Gpu(index) => gpu_used_mb(index),
        }
    }
}

/// Sorts runtime errors: allocation failures (CUDA's included) are
/// out-of-memory (a smaller batch may fit), other CUDA, cuBLAS and cuDNN
/// failures are the device's (the replica restarts), inputs the runtime
/// refuses are the request's, everything else is a plain run error.
fn run_error<R>(e: ort::Error<R>) -> EngineError {
    classify(e.message().to_string(), e.code())
}

fn classify(message: String, code: ort::ErrorCode) -> EngineError {
    let lower = message.to_ascii_lowercase();
    if lower.contains("failed to allocate memory")
        || lower.contains("out of memory")
        || lower.contains("bad_alloc")
    {
        EngineError::OutOfMemory(message)
    } else if code == ort::ErrorCode::DeviceReset
        || [
            "cuda failure",
            "cuda error",
            "cudnn failure",
            "cublas failure",
        ]
        .iter()
        .any(|sign| lower.contains(sign))
    {
        EngineError::Device(message)
    } else if code == ort::ErrorCode::InvalidArgument {
        EngineError::Rejected(message)
    } else {
        EngineError::Run(message)
    }
}

/// The tensor as a session input: its bytes lent to ONNX Runtime when they
/// are aligned for the element type (what the allocator gives in practice),
/// copied into an aligned buffer otherwise.
fn to_value(tensor: &Tensor) -> ort::Result<SessionInputValue<'_>> {
    fn typed<T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug>(
        tensor: &Tensor,
    ) -> ort::Result<SessionInputValue<'_>> {
        let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
        match bytemuck::try_cast_slice::<u8, T>(&tensor.data) {
            Ok(data) => Ok(TensorRef::from_array_view((shape, data))?.into()),
            Err(_) => {
                let data: Vec<T> = bytemuck::pod_collect_to_vec(&tensor.data);
                Ok(OrtTensor::from_array((shape, data))?.into())
            }
        }
    }
    match tensor.dtype {
        DataType::Bool => {
            let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
            let data: Vec<bool> = tensor.data.iter().map(|&b| b != 0).collect();
            Ok(OrtTensor::from_array((shape, data))?.into())
        }
        DataType::Uint8 => typed::<u8>(tensor),
        DataType::Uint16 => typed::<u16>(tensor),
        DataType::Uint32 => typed::<u32>(tensor),
        DataType::Uint64 => typed::<u64>(tensor),
        DataType::Int8 => typed::<i8>(tensor),
        DataType::Int16 => typed::<i16>(tensor),
        DataType::Int32 => typed::<i32>(tensor),
        DataType::Int64 => typed::<i64>(tensor),
        DataType::Fp32 => typed::<f32>(tensor),
        DataType::Fp64 => typed::<f64>(tensor),
        DataType::Fp16 => typed::<half::f16>(tensor),
        DataType::Bf16 => typed::<half::bf16>(tensor),
        DataType::Bytes => {
            let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
            let elements = tensor.bytes_elements().unwrap_or_default();
            Ok(super::onnx_strings::string_tensor(shape, &elements)?.into())
        }
    }
}

fn from_value(value: &DynValue, dtype: DataType) -> ort::Result<Tensor> {
    fn typed<T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug>(
        value: &DynValue,
        dtype: DataType,
    ) -> ort::Result<Tensor> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        Ok(Tensor {
            dtype,
            shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
            data: bytemuck::cast_slice(data).to_vec(),
        })
    }
    match dtype {
        DataType::Bool => {
            let (shape, data) = value.try_extract_tensor::<bool>()?;
            Ok(Tensor {
                dtype,
                shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                data: data.iter().map(|&b| u8::from(b)).collect(),
            })
        }
        DataType::Uint8 => typed::<u8>(value, dtype),
        DataType::Uint16 => typed::<u16>(value, dtype),
        DataType::Uint32 => typed::<u32>(value, dtype),
        DataType::Uint64 => typed::<u64>(value, dtype),
        DataType::Int8 => typed::<i8>(value, dtype),
        DataType::Int16 => typed::<i16>(value, dtype),
        DataType::Int32 => typed::<i32>(value, dtype),
        DataType::Int64 => typed::<i64>(value, dtype),
        DataType::Fp32 => typed::<f32>(value, dtype),
        DataType::Fp64 => typed::<f64>(value, dtype),
        DataType::Fp16 => typed::<half::f16>(value, dtype),
        DataType::Bf16 => typed::<half::bf16>(value, dtype),
        DataType::Bytes => {
            let (shape, data) = super::onnx_strings::string_elements(value)?;
            Ok(Tensor { dtype, shape, data })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ort::ErrorCode;

    #[test]
    fn runtime_errors_are_sorted_by_what_can_be_done() {
        let kind = |message: &str, code| match classify(message.to_string(), code) {
            EngineError::OutOfMemory(_) => "oom",
            EngineError::Device(_) => "device",
            EngineError::Rejected(_) => "rejected",
            EngineError::Run(_) => "run",
            EngineError::Load(_) => "load",
        };
        // CUDA's own out-of-memory splits the batch like the CPU's.
        let cuda_oom =
            "CUDA failure 2: out of memory ; GPU=0 ; hostname=h ; file=cuda_allocator.cc";
        assert_eq!(kind(cuda_oom, ErrorCode::GenericFailure), "oom");
        let arena = "Failed to allocate memory for requested buffer of size 1073741824";
        assert_eq!(kind(arena, ErrorCode::RuntimeException), "oom");
        let illegal = "CUDA failure 700: an illegal memory access was encountered ; GPU=0";
        assert_eq!(kind(illegal, ErrorCode::GenericFailure), "device");
        let cudnn = "CUDNN failure 4: CUDNN_STATUS_INTERNAL_ERROR ; GPU=1";
        assert_eq!(kind(cudnn, ErrorCode::GenericFailure), "device");
        assert_eq!(
            kind("Unexpected input data type", ErrorCode::InvalidArgument),
            "rejected"
        );
        assert_eq!(kind("device lost", ErrorCode::DeviceReset), "device");
        assert_eq!(
            kind("Non-zero status code returned", ErrorCode::GenericFailure),
            "run"
        );
    }
}
