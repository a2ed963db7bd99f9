//! The HTTP API: one module per resource, each exporting a `config_*`
//! function; [`configure`] assembles them. Handlers stay thin: extract,
//! call the service, map the result.

pub mod access_log;
pub mod admin;
pub mod answer;
pub mod dashboard;
pub mod drain;
pub mod error_response;
pub mod form;
pub mod health;
pub mod http_compression;
pub mod json_errors;
pub mod metrics;
pub mod model_config;
pub mod model_repository;
pub mod model_statistics;
pub mod openapi;
pub mod predict;
pub mod predictions;
pub mod schemas;
pub mod shm_regions;
pub mod stats;
pub mod tensor_json;
pub mod upload;
pub mod v2;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use gantry_actors::Priority;

use crate::error::ApiError;
use crate::service::InferenceService;

/// What every HTTP worker shares: the service, and the HTTP limits on
/// bodies.
pub struct AppState {
    pub service: Arc<InferenceService>,
    /// Largest body accepted, in bytes.
    pub body_limit: usize,
    /// Longest a whole body may take to arrive (`server.body_timeout_ms`).
    pub body_timeout: Duration,
}

impl AppState {
    fn limit_mb(&self) -> u64 {
        (self.body_limit / (1024 * 1024)) as u64
    }
}

/// Registers every route, and JSON 404/405 for everything else.
pub fn configure(cfg: &mut web::ServiceConfig) {
    v2::config_v2_infer_api(cfg);
    predict::config_predict_api(cfg);
    upload::config_upload_api(cfg);
    predictions::config_predictions_api(cfg);
    admin::config_admin_api(cfg);
    model_repository::config_model_repository_api(cfg);
    health::config_health_api(cfg);
    metrics::config_metrics_api(cfg);
    stats::config_stats_api(cfg);
    model_config::config_model_config_api(cfg);
    model_statistics::config_model_statistics_api(cfg);
    shm_regions::config_shm_regions_api(cfg);
    v2::config_v2_api(cfg);
    openapi::config_openapi_api(cfg);
    dashboard::config_dashboard_api(cfg);
}

/// The route `method path` answered by `handler`; the path's other methods
/// answer a JSON 405. Every route of the API is made here, and noted in
/// [`registered_routes`].
pub fn route<F, Args>(method: Method, path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    REGISTERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((method.to_string(), path.to_string()));
    web::resource(path)
        .default_service(web::to(method_not_allowed))
        .route(web::method(method).to(handler))
}

/// Every API route the server has registered (once an App was built), as
/// method and path pattern: what `/openapi.json` must describe. (The
/// dashboard's page and assets are not API routes.)
pub fn registered_routes() -> BTreeSet<(String, String)> {
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

static REGISTERED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

async fn method_not_allowed(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}

/// The JSON 404 for unknown routes.
pub async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Reads the whole body, inflating it when it is compressed, answering 413
/// as soon as it (or what it inflates to) exceeds the limit and 408 when it
/// has not arrived within `server.body_timeout_ms`.
pub async fn read_body(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Bytes, ApiError> {
    within_body_timeout(state, read_whole_body(state, req, payload)).await
}

/// Runs `read` (a future reading the request body) within
/// `server.body_timeout_ms`; past it the read is dropped, freeing what it
/// buffered, and the answer is 408 (actix closes the connection, since the
/// body was not read to its end).
pub async fn within_body_timeout<T>(
    state: &AppState,
    read: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(state.body_timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} ms (server.body_timeout_ms)",
            state.body_timeout.as_millis()
        ))),
    }
}

/// Most bytes reserved up front for a body from its `Content-Length`.
const PRESIZE_LIMIT: usize = 4 * 1024 * 1024;

async fn read_whole_body(
    state: &AppState,
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge {
        limit_mb: state.limit_mb(),
    };
    let encoding = http_compression::request_encoding(req.headers())?;
    let declared = declared_length(req);
    if declared.is_some_and(|n| n > state.body_limit) {
        return Err(too_large());
    }
    // What the client declared is reserved only up to a bound: a client
    // that declares 64 MiB and sends nothing must not cost 64 MiB.
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(PRESIZE_LIMIT));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > state.body_limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    match encoding {
        // The inflated size counts against the same limit.
        Some(encoding) => {
            http_compression::inflate(body.freeze(), encoding, state.body_limit).await
        }
        None => Ok(body.freeze()),
    }
}

/// The body length the client declared in `Content-Length`, if any.
pub fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// A timeout from the `x-request-timeout-ms` header, if any.
pub fn header_timeout(req: &HttpRequest) -> Result<Option<Duration>, ApiError> {
    let Some(value) = req.headers().get("x-request-timeout-ms") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            ApiError::BadRequest("x-request-timeout-ms must be a positive integer".into())
        })
}

/// A priority from the `x-priority` header (`high`, `normal` or `low`), if any.
pub fn header_priority(req: &HttpRequest) -> Result<Option<Priority>, ApiError> {
    let Some(value) = req.headers().get("x-priority") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("x-priority must be high, normal or low".into()))?;
    text.parse()
        .map(Some)
        .map_err(|e| ApiError::BadRequest(format!("x-priority: {e}")))
}

/// False when the client sent `Cache-Control: no-cache` (or `no-store`).
pub fn cache_allowed(req: &HttpRequest) -> bool {
    !req.headers()
        .get_all(header::CACHE_CONTROL)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("no-cache") || v.contains("no-store"))
}

/// Parses a JSON body, with serde's message (line, column) on failure.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}
