//! Triton's HTTP protocol beyond the KServe v2 core: the model
//! configuration a model answers with, the configuration override a load
//! may carry, the statistics extension's counters, the registry of
//! the system shared memory extension and the CUDA one's answers. The handlers live in `api`.

pub mod classification;
pub mod config_json;
pub mod config_override;
pub mod cuda_shared_memory;
pub mod shared_memory;
pub mod statistics;

use gantry_actors::DataType;

/// Triton's name of a datatype in a model configuration (`TYPE_FP32`;
/// BYTES is `TYPE_STRING` there).
pub fn config_type(dtype: DataType) -> String {
    match dtype {
        DataType::Bytes => "TYPE_STRING".into(),
        other => format!("TYPE_{}", other.as_str()),
    }
}
