//! The HTTP API: one module per resource, each exporting a `config_*`
//! function; [`configure`] assembles them. Handlers stay thin: extract,
//! call the service, map the result.

pub mod access_log;
pub mod admin;
pub mod dashboard;
pub mod drain;
pub mod encoding;
pub mod files;
pub mod form;
pub mod health;
pub mod json_errors;
pub mod metrics;
pub mod model_config;
pub mod openapi;
pub mod predict;
pub mod predictions;
pub mod repository;
pub mod shared_memory;
pub mod statistics;
pub mod stats;
pub mod v2;

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use gantry_actors::Priority;

use crate::error::ApiError;
use crate::files::FilePredictor;
use crate::media::budget::MemoryBudget;
use crate::media::image::ImageLimits;
use crate::media::pool::MediaPool;
use crate::service::InferenceService;
use crate::triton::shared_memory::SharedMemoryRegistry;

/// State shared by every worker.
pub struct AppState {
    pub service: InferenceService,
    /// Largest body accepted, in bytes.
    pub body_limit: usize,
    /// Longest a whole body may take to arrive (`server.body_timeout_ms`).
    pub body_timeout: Duration,
    /// Requests being served, waited for on shutdown.
    pub drain: drain::Drain,
    /// Bearer token of the admin routes; `None`: loopback clients only.
    pub admin_token: Option<String>,
    pub media: MediaSettings,
    /// Triton's system shared memory regions, registered by clients.
    pub shared_memory: SharedMemoryRegistry,
}

/// How uploaded files are handled.
pub struct MediaSettings {
    /// Where decoding and post-processing run, within the memory budget
    /// (per file and in flight) their jobs reserve from.
    pub pool: MediaPool,
    pub image_limits: ImageLimits,
    /// Most files in one batch upload.
    pub max_batch_files: usize,
}

impl MediaSettings {
    pub fn from_config(config: &crate::config::MediaConfig) -> Self {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mib = |mb: u64| mb.saturating_mul(1 << 20);
        let memory = MemoryBudget::new(mib(config.max_file_memory_mb), mib(config.max_inflight_mb));
        MediaSettings {
            pool: MediaPool::new(threads, config.queue_capacity).with_memory(memory),
            image_limits: ImageLimits {
                max_pixels: config.max_image_pixels,
                max_side: config.max_image_side,
                max_aspect_ratio: config.max_aspect_ratio,
            },
            max_batch_files: config.max_batch_files,
        }
    }
}

impl AppState {
    fn limit_mb(&self) -> u64 {
        (self.body_limit / (1024 * 1024)) as u64
    }

    /// Runs file predictions for this server.
    pub fn file_predictor(&self) -> FilePredictor<'_> {
        FilePredictor {
            service: &self.service,
            pool: &self.media.pool,
            limits: self.media.image_limits,
        }
    }
}

/// Registers every route, and JSON 404/405 for everything else.
pub fn configure(cfg: &mut web::ServiceConfig) {
    predict::config_predict_api(cfg);
    files::config_files_api(cfg);
    predictions::config_predictions_api(cfg);
    admin::config_admin_api(cfg);
    repository::config_repository_api(cfg);
    health::config_health_api(cfg);
    metrics::config_metrics_api(cfg);
    stats::config_stats_api(cfg);
    model_config::config_model_config_api(cfg);
    statistics::config_statistics_api(cfg);
    shared_memory::config_shared_memory_api(cfg);
    v2::config_v2_api(cfg);
    openapi::config_openapi_api(cfg);
    dashboard::config_dashboard_api(cfg);
}

/// The protocol extensions `GET /v2` lists: those of Triton's that Gantry
/// serves.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "statistics",
    "system_shared_memory",
    "classification",
    "sequence",
];

/// A resource whose unmatched methods answer a JSON 405.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}

/// The supervisor's snapshot of every model, the budget and load errors
/// (what stats and metrics report).
pub async fn server_snapshot(
    state: &AppState,
) -> Result<gantry_actors::supervisor::ServerSnapshot, ApiError> {
    state
        .service
        .serving
        .supervisor
        .send(gantry_actors::supervisor::GetSnapshot)
        .await
        .map_err(|e| ApiError::Internal(format!("supervisor did not answer: {e}")))?
        .map_err(ApiError::Internal)
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
    let encoding = encoding::request_encoding(req.headers())?;
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
        Some(encoding) => encoding::inflate(body.freeze(), encoding, state.body_limit).await,
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
