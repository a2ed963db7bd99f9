//! The Triton model repository API: `POST /v2/repository/index`, and
//! `POST /v2/repository/models/{m}/load` and `/unload`, so Triton clients
//! (`load_model`, `unload_model`, `get_model_repository_index`) work. Load
//! and unload are admin routes.

use actix_web::{web, HttpRequest, HttpResponse};
use gantry_actors::lifecycle::{LoadModel, UnloadModel};
use serde::Serialize;

use super::admin::authorize;
use super::{resource, AppState};
use crate::error::ApiError;

pub fn config_repository_api(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v2/repository/index").route(web::post().to(index)))
        .service(resource("/v2/repository/models/{model}/load").route(web::post().to(load)))
        .service(resource("/v2/repository/models/{model}/unload").route(web::post().to(unload)));
}

#[derive(Serialize, utoipa::ToSchema)]
struct IndexEntry {
    name: String,
    version: String,
    /// `READY`, `UNAVAILABLE` (no ready replica) or `FAILED` (cannot load).
    state: &'static str,
    reason: String,
}

#[utoipa::path(post, path = "/v2/repository/index", tag = "v2",
    responses((status = 200, description = "Every model, served or failed", body = Vec<IndexEntry>)))]
async fn index(state: web::Data<AppState>) -> HttpResponse {
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
    entries.extend(failed.into_iter().map(|e| IndexEntry {
        name: e.model,
        version: String::new(),
        state: "FAILED",
        reason: e.error,
    }));
    HttpResponse::Ok().json(entries)
}

#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "admin",
    params(super::openapi::ModelParam), security(("admin_token" = [])),
    responses((status = 200, description = "What the load changed", body = super::openapi::Loaded), super::openapi::AdminErrors))]
async fn load(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let change = state
        .service
        .serving
        .supervisor
        .send(LoadModel {
            model: path.into_inner(),
        })
        .await
        .map_err(|e| ApiError::Internal(format!("supervisor did not answer: {e}")))??;
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
    state
        .service
        .serving
        .supervisor
        .send(UnloadModel {
            model: path.into_inner(),
        })
        .await
        .map_err(|e| ApiError::Internal(format!("supervisor did not answer: {e}")))??;
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}
