//! Health and readiness: `GET /api/optimized/health` (per model) and the
//! KServe `GET /v2/health/live` and `GET /v2/health/ready`.

use std::collections::BTreeMap;

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::{route, AppState};

pub fn config_health_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(Method::GET, "/api/optimized/health", health))
        .service(route(Method::GET, "/v2/health/live", live))
        .service(route(Method::GET, "/v2/health/ready", ready));
}

#[derive(Serialize, utoipa::ToSchema)]
struct ModelHealth {
    /// It can take requests: in memory, or out of memory and able to load.
    ready: bool,
    /// `resident`, `cold` (out of memory; loads on its next request),
    /// `loading`, `starting` or `failed`.
    residency: &'static str,
    ready_replicas: usize,
    replicas: usize,
}

/// State of an optional dependency: `up`, `down` or `disabled`.
#[derive(Serialize, utoipa::ToSchema)]
struct Dependencies {
    redis: &'static str,
    postgres: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`; `degraded` when a configured dependency is down (serving goes
    /// on); `unavailable` when a model cannot take requests (503).
    status: &'static str,
    models: BTreeMap<String, ModelHealth>,
    dependencies: Dependencies,
    /// Repository folders that could not be loaded, with the reason.
    failed_models: BTreeMap<String, String>,
}

#[utoipa::path(get, path = "/api/optimized/health", tag = "operations",
    responses((status = 200, description = "Every model can take requests (in memory, or loaded when asked for)", body = Health),
        (status = 503, description = "A model cannot take requests, or the server is shutting down", body = Health)))]
async fn health(state: web::Data<AppState>) -> HttpResponse {
    let models: BTreeMap<String, ModelHealth> = state
        .service
        .models()
        .iter()
        .map(|m| {
            let health = ModelHealth {
                ready: m.is_servable(),
                residency: m.state.residency().as_str(),
                ready_replicas: m.state.ready_replicas(),
                replicas: m.state.desired_replicas(),
            };
            (m.name().to_string(), health)
        })
        .collect();
    let ready = models.values().all(|m| m.ready);
    let service = &state.service;
    let dependencies = Dependencies {
        redis: service.redis_status(),
        postgres: service.postgres_status(),
    };
    let degraded = dependencies.redis == "down" || dependencies.postgres == "down";
    let body = Health {
        status: match (ready, degraded) {
            (false, _) => "unavailable",
            (true, true) => "degraded",
            (true, false) => "ok",
        },
        models,
        dependencies,
        failed_models: service
            .failed_models()
            .into_iter()
            .map(|e| (e.model, e.error))
            .collect(),
    };
    if service.is_draining() {
        return HttpResponse::ServiceUnavailable().json(Health {
            status: "shutting_down",
            ..body
        });
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[utoipa::path(get, path = "/v2/health/live", tag = "v2",
    responses((status = 200, description = "The server is up", body = super::schemas::Live)))]
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "live": true }))
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "v2",
    responses((status = 200, description = "Every model is ready", body = super::schemas::Ready),
        (status = 503, description = "A model is not ready, or the server is shutting down", body = super::schemas::Ready)))]
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.service.is_ready() {
        HttpResponse::Ok().json(serde_json::json!({ "ready": true }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "ready": false }))
    }
}
