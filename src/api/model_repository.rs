//! The Triton model repository API: `POST /v2/repository/index`, and
//! `POST /v2/repository/models/{m}/load` and `/unload`, so Triton clients
//! (`load_model`, `unload_model`, `get_model_repository_index`) work. Load
//! answers once the model serves, and may override its settings; an
//! unloaded model stays in the index as `UNAVAILABLE`. Load and unload are
//! admin routes.

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::admin::authorize;
use super::{parse_json, read_body, route, AppState};
use crate::error::ApiError;
use crate::service::models::{overrides_from_parameters, IndexEntry};
use gantry_actors::repository::LoadOverrides;

pub fn config_model_repository_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(Method::POST, "/v2/repository/index", index))
        .service(route(
            Method::POST,
            "/v2/repository/models/{model}/load",
            load,
        ))
        .service(route(
            Method::POST,
            "/v2/repository/models/{model}/unload",
            unload,
        ));
}

#[utoipa::path(post, path = "/v2/repository/index", tag = "v2",
    responses((status = 200, description = "Every model, served or failed", body = Vec<IndexEntry>)))]
async fn index(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.service.repository_index())
}

/// A load request's body: Triton's `parameters`, of which `config` (a
/// JSON object, as text or inline) overrides the model's settings.
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct LoadBody {
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// The settings override a load body asks for, if any.
fn load_overrides(model: &str, body: &[u8]) -> Result<Option<LoadOverrides>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let body: LoadBody = parse_json(body)?;
    overrides_from_parameters(model, body.parameters)
}

/// Answers once the model serves (or with why it cannot): the next
/// request finds it ready.
#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "admin",
    params(super::schemas::ModelParam), security(("admin_token" = [])),
    request_body(content = Option<LoadBody>, content_type = "application/json"),
    responses((status = 200, description = "The model serves; what the load changed", body = super::schemas::Loaded), super::schemas::AdminErrors))]
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
    params(super::schemas::ModelParam), security(("admin_token" = [])),
    responses((status = 200, description = "The model is unloaded", body = super::schemas::Unloaded), super::schemas::AdminErrors))]
async fn unload(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    state.service.unload_model(&path).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}
