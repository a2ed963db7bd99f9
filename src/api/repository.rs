//! The Triton model repository API: `POST /v2/repository/index`, and
//! `POST /v2/repository/models/{m}/load` and `/unload`, so Triton clients
//! (`load_model`, `unload_model`, `get_model_repository_index`) work. Load
//! answers once the model serves, and may override its settings; an
//! unloaded model stays in the index as `UNAVAILABLE`. Load and unload are
//! admin routes.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::admin::authorize;
use super::{parse_json, read_body, resource, AppState};
use crate::error::ApiError;
use crate::triton::config_override::overrides_from_config;

pub fn config_repository_api(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v2/repository/index").route(web::post().to(index)))
        .service(resource("/v2/repository/models/{model}/load").route(web::post().to(load)))
        .service(resource("/v2/repository/models/{model}/unload").route(web::post().to(unload)));
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct IndexEntry {
    pub name: String,
    pub version: String,
    /// `READY`, `UNAVAILABLE` (no ready replica, or unloaded) or `FAILED`
    /// (cannot load).
    pub state: &'static str,
    pub reason: String,
}

#[utoipa::path(post, path = "/v2/repository/index", tag = "v2",
    responses((status = 200, description = "Every model, served or failed", body = Vec<IndexEntry>)))]
async fn index(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(index_entries(&state))
}

/// Every model of the repository: served (ready or not), unloaded, failed.
pub(crate) fn index_entries(state: &AppState) -> Vec<IndexEntry> {
    let serving = &state.service.serving;
    let mut entries: Vec<IndexEntry> = serving
        .models()
        .iter()
        .map(|m| IndexEntry {
            name: m.name().to_string(),
            version: m.spec.version.clone(),
            state: if m.is_ready() { "READY" } else { "UNAVAILABLE" },
            reason: if m.is_ready() {
                String::new()
            } else {
                "no ready replica".into()
            },
        })
        .collect();
    let failed = serving
        .load_errors
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let unloaded = serving
        .unloaded
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    entries.extend(unloaded.into_iter().map(|(name, version)| IndexEntry {
        name,
        version,
        state: "UNAVAILABLE",
        reason: "unloaded".into(),
    }));
    entries.extend(failed.into_iter().map(|e| IndexEntry {
        name: e.model,
        version: String::new(),
        state: "FAILED",
        reason: e.error,
    }));
    entries
}

/// A load request's body: Triton's `parameters`, of which `config` (a
/// JSON object, as text or inline) overrides the model's settings.
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct LoadBody {
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// The settings override a load body asks for, if any.
fn load_overrides(model: &str, body: &[u8]) -> Result<Option<toml::Table>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let body: LoadBody = parse_json(body)?;
    overrides_from_parameters(model, body.parameters)
}

/// The settings override a load's `parameters` ask for (HTTP and gRPC).
pub(crate) fn overrides_from_parameters(
    model: &str,
    parameters: Map<String, Value>,
) -> Result<Option<toml::Table>, ApiError> {
    let mut overrides = None;
    for (key, value) in parameters {
        match (key.as_str(), value) {
            ("config", Value::String(text)) => {
                overrides = Some(overrides_from_config(model, &text).map_err(ApiError::BadRequest)?)
            }
            ("config", value @ Value::Object(_)) => {
                overrides = Some(
                    overrides_from_config(model, &value.to_string())
                        .map_err(ApiError::BadRequest)?,
                )
            }
            ("config", other) => {
                return Err(ApiError::BadRequest(format!(
                    "parameters.config must be a JSON object (or its text), not {other}"
                )))
            }
            (key, _) if key.starts_with("file:") => {
                return Err(ApiError::BadRequest(format!(
                    "parameters.{key}: loading model files sent with the request is not \
                     supported; put them in the model repository"
                )))
            }
            (key, _) => {
                return Err(ApiError::BadRequest(format!(
                    "parameters.{key} is not a load parameter (config is)"
                )))
            }
        }
    }
    Ok(overrides)
}

/// Answers once the model serves (or with why it cannot): the next
/// request finds it ready.
#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "admin",
    params(super::openapi::ModelParam), security(("admin_token" = [])),
    request_body(content = Option<LoadBody>, content_type = "application/json"),
    responses((status = 200, description = "The model serves; what the load changed", body = super::openapi::Loaded), super::openapi::AdminErrors))]
async fn load(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let body = read_body(&state, &req, payload).await?;
    let overrides = load_overrides(&path, &body)?;
    let change = state.service.load_model(&path, overrides).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "change": change.as_str() })))
}

#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "admin",
    params(super::openapi::ModelParam), security(("admin_token" = [])),
    responses((status = 200, description = "The model is unloaded", body = super::openapi::Unloaded), super::openapi::AdminErrors))]
async fn unload(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    state.service.unload_model(&path).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}
