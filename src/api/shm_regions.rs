//! Triton's system shared memory extension over HTTP: register a window of
//! a POSIX shared memory object as a named region, unregister one or all,
//! and list them (`/v2/systemsharedmemory/...`, Triton's paths and JSON);
//! and the CUDA shared memory extension's routes (`/v2/cudasharedmemory/...`),
//! answered as a server holding no CUDA region answers
//! ([`crate::triton::cuda_shared_memory`]).
//! The registry itself is [`crate::triton::shared_memory`]; the infer side
//! (inputs read from regions, outputs written to them) is
//! [`crate::service::shared_tensors`].
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

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::admin::authorize;
use super::{parse_json, read_body, route, AppState};
use crate::error::ApiError;
use crate::triton::cuda_shared_memory;
use crate::triton::shared_memory::RegionStatus;

pub fn config_shm_regions_api(cfg: &mut web::ServiceConfig) {
    const ONE: &str = "/v2/systemsharedmemory/region/{name}";
    cfg.service(route(
        Method::GET,
        "/v2/systemsharedmemory/status",
        status_all,
    ))
    .service(route(
        Method::POST,
        "/v2/systemsharedmemory/unregister",
        unregister_all,
    ))
    .service(route(Method::GET, &format!("{ONE}/status"), status))
    .service(route(Method::POST, &format!("{ONE}/register"), register))
    .service(route(
        Method::POST,
        &format!("{ONE}/unregister"),
        unregister,
    ));
    const CUDA_ONE: &str = "/v2/cudasharedmemory/region/{name}";
    cfg.service(route(
        Method::GET,
        "/v2/cudasharedmemory/status",
        cuda_status_all,
    ))
    .service(route(
        Method::POST,
        "/v2/cudasharedmemory/unregister",
        cuda_unregister_all,
    ))
    .service(route(
        Method::GET,
        &format!("{CUDA_ONE}/status"),
        cuda_status,
    ))
    .service(route(
        Method::POST,
        &format!("{CUDA_ONE}/register"),
        cuda_register,
    ))
    .service(route(
        Method::POST,
        &format!("{CUDA_ONE}/unregister"),
        cuda_unregister,
    ));
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
        super::schemas::AdminErrors))]
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
        .service
        .shared_memory()
        .register(&path, &body.key, body.offset, body.byte_size)?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Drops the region `name` (success when there is none, as in Triton).
#[utoipa::path(post, path = "/v2/systemsharedmemory/region/{name}/unregister", tag = "admin",
    params(("name" = String, Path, description = "The region's name")), security(("admin_token" = [])),
    responses((status = 200, description = "The region is no longer registered", body = Done),
        super::schemas::AdminErrors))]
async fn unregister(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    state.service.shared_memory().unregister(&path);
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Drops every region.
#[utoipa::path(post, path = "/v2/systemsharedmemory/unregister", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "No region is registered", body = Done),
        super::schemas::AdminErrors))]
async fn unregister_all(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    state.service.shared_memory().unregister_all();
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Every registered region.
#[utoipa::path(get, path = "/v2/systemsharedmemory/status", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Every registered region", body = Vec<RegionStatus>),
        super::schemas::AdminErrors))]
async fn status_all(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(state.service.shared_memory().status(None)?))
}

/// The region `name`, as a list of one (400 when there is none).
#[utoipa::path(get, path = "/v2/systemsharedmemory/region/{name}/status", tag = "admin",
    params(("name" = String, Path, description = "The region's name")), security(("admin_token" = [])),
    responses((status = 200, description = "The region, as a list of one", body = Vec<RegionStatus>),
        super::schemas::AdminErrors))]
async fn status(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(state.service.shared_memory().status(Some(&path))?))
}

/// Every CUDA region: none.
#[utoipa::path(get, path = "/v2/cudasharedmemory/status", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Every registered CUDA region (none)", body = Vec<cuda_shared_memory::CudaRegionStatus>),
        super::schemas::AdminErrors))]
async fn cuda_status_all(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(cuda_shared_memory::status(None)?))
}

/// The CUDA region `name`: 400, as none is registered.
#[utoipa::path(get, path = "/v2/cudasharedmemory/region/{name}/status", tag = "admin",
    params(("name" = String, Path, description = "The region's name")), security(("admin_token" = [])),
    responses((status = 200, description = "The region, as a list of one", body = Vec<cuda_shared_memory::CudaRegionStatus>),
        super::schemas::AdminErrors))]
async fn cuda_status(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(cuda_shared_memory::status(Some(&path))?))
}

/// Refused (400): this server maps no CUDA IPC handles; the answer says to
/// use system shared memory.
#[utoipa::path(post, path = "/v2/cudasharedmemory/region/{name}/register", tag = "admin",
    params(("name" = String, Path, description = "The region's name")), security(("admin_token" = [])),
    responses((status = 400, description = "CUDA regions are not registered here"),
        super::schemas::AdminErrors))]
async fn cuda_register(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Err(cuda_shared_memory::register(&path))
}

/// Success: no CUDA region `name` is registered (as Triton answers for
/// one it does not hold).
#[utoipa::path(post, path = "/v2/cudasharedmemory/region/{name}/unregister", tag = "admin",
    params(("name" = String, Path, description = "The region's name")), security(("admin_token" = [])),
    responses((status = 200, description = "The region is not registered", body = Done),
        super::schemas::AdminErrors))]
async fn cuda_unregister(
    state: web::Data<AppState>,
    req: HttpRequest,
    _path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Success: no CUDA region is registered.
#[utoipa::path(post, path = "/v2/cudasharedmemory/unregister", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "No CUDA region is registered", body = Done),
        super::schemas::AdminErrors))]
async fn cuda_unregister_all(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(json!({})))
}
