//! Triton's statistics extension: `GET /v2/models/stats` (every served
//! model) and `GET /v2/models/{m}[/versions/{v}]/stats`, counted by
//! [`crate::triton::statistics`].

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::v2::{model_at, ModelPath};
use super::{resource, AppState};
use crate::error::ApiError;

/// Registered before the v2 core's routes: `/v2/models/stats` is not a
/// model called `stats`.
pub fn config_statistics_api(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v2/models/stats").route(web::get().to(all_models)));
    for path in [
        "/v2/models/{model}/stats",
        "/v2/models/{model}/versions/{version}/stats",
    ] {
        cfg.service(resource(path).route(web::get().to(one_model)));
    }
}

#[utoipa::path(get, path = "/v2/models/stats", tag = "v2",
    responses((status = 200, description = "Every served model's statistics, in Triton's form", body = Object)))]
async fn all_models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(statistics_json(&state, None).unwrap_or_default())
}

/// `{"model_stats": [...]}` in Triton's form: of the model at `path`, or of
/// every served model (HTTP answers it; gRPC reads it into its message).
pub(crate) fn statistics_json(
    state: &AppState,
    path: Option<&ModelPath>,
) -> Result<serde_json::Value, ApiError> {
    let statistics = &state.service.metrics.statistics;
    let stats: Vec<_> = match path {
        Some(path) => {
            let model = model_at(state, path)?;
            vec![statistics.model_stats(model.name(), &model.spec.version)]
        }
        None => state
            .service
            .serving
            .models()
            .iter()
            .map(|m| statistics.model_stats(m.name(), &m.spec.version))
            .collect(),
    };
    Ok(json!({ "model_stats": stats }))
}

#[utoipa::path(get, path = "/v2/models/{model}/stats", tag = "v2", params(super::openapi::ModelParam),
    responses((status = 200, description = "The model's statistics, in Triton's form", body = Object),
        (status = 404, description = "No such model or version", body = crate::error::ErrorBody)))]
async fn one_model(
    state: web::Data<AppState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(statistics_json(&state, Some(&path))?))
}
