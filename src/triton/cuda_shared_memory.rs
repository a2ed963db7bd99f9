//! Triton's CUDA shared memory extension, on a server that registers no
//! CUDA regions: its inputs and outputs live in host memory, so a client's
//! CUDA IPC handle has nothing to map into. Status lists no region (and a
//! named one is unknown, 400, as in Triton), unregistering succeeds (as
//! Triton's does for a region it does not hold: clients unregister before
//! they start, the system shared memory examples included), and
//! registering is refused with what to use instead: system shared memory.

use serde::Serialize;

use crate::error::ApiError;

/// One registered region, as Triton's status lists it (none here).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CudaRegionStatus {
    pub name: String,
    pub device_id: u64,
    pub byte_size: u64,
}

/// The regions registered, every one or the one named.
pub fn status(name: Option<&str>) -> Result<Vec<CudaRegionStatus>, ApiError> {
    match name {
        None => Ok(Vec::new()),
        Some(name) => Err(ApiError::BadRequest(format!(
            "Unable to find cuda shared memory region: '{name}'"
        ))),
    }
}

/// Why a CUDA region cannot be registered here.
pub fn register(name: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "cannot register CUDA shared memory region '{name}': this server keeps inputs and \
         outputs in host memory and maps no CUDA IPC handles; register the region as system \
         shared memory (/v2/systemsharedmemory) instead"
    ))
}
