//! Triton's system shared memory extension over HTTP: register a window of
//! a POSIX shared memory object as a named region, unregister one or all,
//! and list them (`/v2/systemsharedmemory/...`, Triton's paths and JSON);
//! and the infer side: the `shared_memory_region`,
//! `shared_memory_byte_size` and `shared_memory_offset` parameters of an
//! input (its bytes are read from the region) or a requested output (its
//! bytes are written there, and the answer says how many instead of
//! carrying them). The registry itself is [`crate::triton::shared_memory`].
//!
//! Authorization: all five routes are admin routes (`authorize`, as model
//! load and unload), and so is an infer request that names a region.
//! Registering makes the server open a host object and write into it on
//! later requests' behalf, and the region names are what lets any request
//! read or overwrite another process's memory; only a client on the same
//! host can share memory with the server at all, and such a client is a
//! loopback one, which passes without a token while `server.admin_token`
//! is unset (as Triton's clients expect: they send none). With a token set,
//! or behind a proxy, shared memory clients send the bearer token
//! (tritonclient's `headers=`), remote ones are refused before any region
//! is touched. Unregistering an unknown name succeeds, as in Triton; the
//! status of an unknown one is 400, as in Triton's HTTP server.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use gantry_actors::{DataType, Tensor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::admin::authorize;
use super::predict::select_outputs;
use super::{parse_json, read_body, resource, AppState};
use crate::codec::check_bools;
use crate::error::ApiError;
use crate::service::PredictCall;
use crate::triton::shared_memory::{Region, RegionStatus, SharedMemoryRegistry};

pub fn config_shared_memory_api(cfg: &mut web::ServiceConfig) {
    const ONE: &str = "/v2/systemsharedmemory/region/{name}";
    cfg.service(resource("/v2/systemsharedmemory/status").route(web::get().to(status_all)))
        .service(
            resource("/v2/systemsharedmemory/unregister").route(web::post().to(unregister_all)),
        )
        .service(resource(&format!("{ONE}/status")).route(web::get().to(status)))
        .service(resource(&format!("{ONE}/register")).route(web::post().to(register)))
        .service(resource(&format!("{ONE}/unregister")).route(web::post().to(unregister)));
}

/// The answer of register and unregister: an empty object.
#[derive(utoipa::ToSchema)]
struct Done {}

/// A register request: which object, and which bytes of it.
#[derive(Deserialize, utoipa::ToSchema)]
struct RegisterBody {
    /// The shared memory object's name (`/name`, as given to `shm_open`).
    key: String,
    /// Where the region starts in the object, in bytes.
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

/// Opens the object and registers the window as the region `name`.
#[utoipa::path(post, path = "/v2/systemsharedmemory/region/{name}/register", tag = "admin",
    params(("name" = String, Path, description = "The region's name")), security(("admin_token" = [])),
    request_body(content = RegisterBody, content_type = "application/json"),
    responses((status = 200, description = "The region is registered", body = Done),
        super::openapi::AdminErrors))]
async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let body = read_body(&state, &req, payload).await?;
    let body: RegisterBody = parse_json(&body)?;
    state
        .shared_memory
        .register(&path, &body.key, body.offset, body.byte_size)?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Drops the region `name` (success when there is none, as in Triton).
#[utoipa::path(post, path = "/v2/systemsharedmemory/region/{name}/unregister", tag = "admin",
    params(("name" = String, Path, description = "The region's name")), security(("admin_token" = [])),
    responses((status = 200, description = "The region is no longer registered", body = Done),
        super::openapi::AdminErrors))]
async fn unregister(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    state.shared_memory.unregister(&path);
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Drops every region.
#[utoipa::path(post, path = "/v2/systemsharedmemory/unregister", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "No region is registered", body = Done),
        super::openapi::AdminErrors))]
async fn unregister_all(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    state.shared_memory.unregister_all();
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Every registered region.
#[utoipa::path(get, path = "/v2/systemsharedmemory/status", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Every registered region", body = Vec<RegionStatus>),
        super::openapi::AdminErrors))]
async fn status_all(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(state.shared_memory.status(None)?))
}

/// The region `name`, as a list of one (400 when there is none).
#[utoipa::path(get, path = "/v2/systemsharedmemory/region/{name}/status", tag = "admin",
    params(("name" = String, Path, description = "The region's name")), security(("admin_token" = [])),
    responses((status = 200, description = "The region, as a list of one", body = Vec<RegionStatus>),
        super::openapi::AdminErrors))]
async fn status(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(state.shared_memory.status(Some(&path))?))
}

/// Where a tensor's bytes are in shared memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRef {
    pub region: String,
    /// The input's size, or the room for the output, in bytes.
    pub byte_size: usize,
    /// From the region's start.
    pub offset: usize,
}

const REGION: &str = "shared_memory_region";
const BYTE_SIZE: &str = "shared_memory_byte_size";
const OFFSET: &str = "shared_memory_offset";

/// The shared memory the `parameters` of a tensor (`kind` `name`: "input
/// 'x'") name, if any; 400 when they are incomplete or not of their types.
pub fn shared_ref(
    parameters: &Map<String, Value>,
    kind: &str,
    name: &str,
) -> Result<Option<SharedRef>, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("{kind} '{name}': {why}"));
    let size = |key: &str| -> Result<Option<usize>, ApiError> {
        match parameters.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("{key} must be a non-negative integer, not {v}"))),
        }
    };
    let byte_size = size(BYTE_SIZE)?;
    let offset = size(OFFSET)?;
    let region = match parameters.get(REGION) {
        None if byte_size.is_none() && offset.is_none() => return Ok(None),
        None => return Err(bad(format!("{BYTE_SIZE} and {OFFSET} need {REGION}"))),
        Some(Value::String(name)) => name.clone(),
        Some(v) => return Err(bad(format!("{REGION} must be a region's name, not {v}"))),
    };
    let byte_size = byte_size.ok_or_else(|| bad(format!("{REGION} needs {BYTE_SIZE}")))?;
    Ok(Some(SharedRef {
        region,
        byte_size,
        offset: offset.unwrap_or(0),
    }))
}

/// An input whose bytes are in shared memory, read once the request is
/// authorized: it goes at `position` among the call's inputs.
#[derive(Debug)]
pub struct SharedInput {
    pub position: usize,
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub at: SharedRef,
}

/// Copies each input out of its region into `call`, in request order:
/// 400 for an unknown region, 422 when the window leaves the region or its
/// bytes do not make the input's shape.
pub fn read_inputs(
    registry: &SharedMemoryRegistry,
    call: &mut PredictCall,
    inputs: Vec<SharedInput>,
) -> Result<(), ApiError> {
    for input in inputs {
        let what = format!("input '{}'", input.name);
        let region = registry.region(&input.at.region)?;
        let bytes = region.read(input.at.offset, input.at.byte_size, &what)?;
        let tensor = Tensor::new(input.dtype, input.shape, bytes)
            .map_err(|e| ApiError::InvalidTensor(format!("{what}: {e}")))?;
        check_bools(&input.name, &tensor)?;
        let position = input.position.min(call.inputs.len());
        call.inputs.insert(position, (input.name, tensor));
    }
    Ok(())
}

/// The regions outputs go to, each checked to hold its window.
#[derive(Default)]
pub struct OutputRegions(Vec<(String, Arc<Region>, SharedRef)>);

impl OutputRegions {
    /// Finds the region of each `(output, where)`, before the prediction
    /// runs: 400 for an unknown region, 422 for a window that leaves it.
    pub fn resolve<'a>(
        registry: &SharedMemoryRegistry,
        outputs: impl IntoIterator<Item = (&'a str, &'a SharedRef)>,
    ) -> Result<OutputRegions, ApiError> {
        outputs
            .into_iter()
            .map(|(name, at)| {
                let region = registry.region(&at.region)?;
                region.check(at.offset, at.byte_size, &format!("output '{name}'"))?;
                Ok((name.to_string(), region, at.clone()))
            })
            .collect::<Result<_, ApiError>>()
            .map(OutputRegions)
    }

    /// Writes each output into its region once every one is known to fit
    /// (422, and nothing written, when one does not).
    pub fn write(&self, outputs: &[(String, Tensor)]) -> Result<(), ApiError> {
        let names: Vec<String> = self.0.iter().map(|(name, _, _)| name.clone()).collect();
        let tensors = select_outputs(outputs, Some(&names))?;
        for ((name, region, at), (_, tensor)) in self.0.iter().zip(&tensors) {
            let needed = tensor.data.len();
            if needed > at.byte_size {
                return Err(ApiError::InvalidTensor(format!(
                    "output '{name}': {BYTE_SIZE} is {} bytes, too small for its {needed} bytes \
                     (shared memory region '{}')",
                    at.byte_size, at.region
                )));
            }
            region.check(at.offset, needed, &format!("output '{name}'"))?;
        }
        for ((name, region, at), (_, tensor)) in self.0.iter().zip(&tensors) {
            region.write(at.offset, &tensor.data, &format!("output '{name}'"))?;
        }
        Ok(())
    }
}

/// The `parameters` of an output answered in shared memory: the region and
/// the bytes written there (and the offset, when not 0).
pub fn answer_parameters(at: &SharedRef, written: usize) -> Value {
    let mut parameters = json!({ REGION: at.region, BYTE_SIZE: written });
    if at.offset != 0 {
        parameters[OFFSET] = json!(at.offset);
    }
    parameters
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn parameters_name_a_region_completely_or_not_at_all() {
        assert_eq!(
            shared_ref(&params(json!({"binary_data_size": 8})), "input", "x").unwrap(),
            None
        );
        let at = shared_ref(
            &params(json!({REGION: "in", BYTE_SIZE: 24, OFFSET: 8})),
            "input",
            "x",
        )
        .unwrap();
        assert_eq!(
            at,
            Some(SharedRef {
                region: "in".into(),
                byte_size: 24,
                offset: 8
            })
        );
        let at = shared_ref(&params(json!({REGION: "in", BYTE_SIZE: 24})), "input", "x").unwrap();
        assert_eq!(at.unwrap().offset, 0);
        for wrong in [
            json!({REGION: "in"}),
            json!({BYTE_SIZE: 24}),
            json!({OFFSET: 0}),
            json!({REGION: 3, BYTE_SIZE: 24}),
            json!({REGION: "in", BYTE_SIZE: -1}),
            json!({REGION: "in", BYTE_SIZE: 2.5}),
            json!({REGION: "in", BYTE_SIZE: 24, OFFSET: "8"}),
        ] {
            let e = shared_ref(&params(wrong.clone()), "input", "x").unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{wrong}: {e:?}");
        }
    }

    #[test]
    fn answers_name_the_region_and_the_bytes_written() {
        let at = SharedRef {
            region: "out".into(),
            byte_size: 64,
            offset: 0,
        };
        assert_eq!(
            answer_parameters(&at, 24),
            json!({REGION: "out", BYTE_SIZE: 24})
        );
        let at = SharedRef { offset: 8, ..at };
        assert_eq!(
            answer_parameters(&at, 24),
            json!({REGION: "out", BYTE_SIZE: 24, OFFSET: 8})
        );
    }
}
