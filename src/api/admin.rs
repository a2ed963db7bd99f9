//! Admin routes for operators: scale a model's replicas and reload the
//! configuration and model repository, on a live server. They need
//! `Authorization: Bearer <server.admin_token>`; with no token configured
//! they answer loopback clients only, and only requests that carry no
//! forwarding header: behind a reverse proxy on the same host every client's
//! TCP peer is loopback, so the peer alone proves nothing there.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{parse_json, read_body, route, AppState};
use crate::error::ApiError;
use crate::service::admin::{Caller, FORWARDING_HEADERS};

pub fn config_admin_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(
        Method::PUT,
        "/api/optimized/models/{model}/replicas",
        scale,
    ))
    .service(route(Method::POST, "/api/optimized/reload", reload));
}

/// Lets the request through when it may use admin routes.
pub fn authorize(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    state.service.authorize(&caller_of(req))
}

/// An HTTP request as an admin caller.
pub fn caller_of(req: &HttpRequest) -> Caller<'_> {
    let headers = req.headers();
    Caller {
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        peer: req.peer_addr(),
        forwarded: FORWARDING_HEADERS
            .iter()
            .copied()
            .find(|h| headers.contains_key(*h)),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    replicas: usize,
}

#[utoipa::path(put, path = "/api/optimized/models/{model}/replicas", tag = "admin",
    params(super::schemas::ModelParam), request_body = ScaleBody, security(("admin_token" = [])),
    responses((status = 200, description = "Replicas before and after", body = super::schemas::Scaled), super::schemas::ScaleErrors))]
async fn scale(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let body: ScaleBody = parse_json(&read_body(&state, &req, payload).await?)?;
    if body.replicas > 1024 {
        return Err(ApiError::BadRequest("replicas must be at most 1024".into()));
    }
    let model = path.into_inner();
    let (before, after) = state.service.scale(&model, body.replicas).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "model": model,
        "previous_replicas": before,
        "replicas": after,
    })))
}

#[utoipa::path(post, path = "/api/optimized/reload", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "What changed, and what failed to load", body = super::schemas::Reloaded), super::schemas::AdminErrors))]
async fn reload(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let report = state.service.reload().await?;
    let changes: BTreeMap<&str, &str> = report
        .changes
        .iter()
        .map(|(m, c)| (m.as_str(), c.as_str()))
        .collect();
    let failed: BTreeMap<&str, &str> = report
        .failed
        .iter()
        .map(|e| (e.model.as_str(), e.error.as_str()))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "models": changes, "failed_models": failed })))
}
