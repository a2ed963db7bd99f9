//! Triton's statistics extension: `GET /v2/models/stats` (every served
//! model) and `GET /v2/models/{m}[/versions/{v}]/stats`, counted by
//! [`crate::triton::statistics`].

use actix_web::http::Method;
use actix_web::{web, HttpResponse};

use super::{route, AppState};
use crate::error::ApiError;
use crate::service::models::ModelPath;

/// Registered before the v2 core's routes: `/v2/models/stats` is not a
/// model called `stats`.
pub fn config_model_statistics_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(Method::GET, "/v2/models/stats", all_models));
    for path in [
        "/v2/models/{model}/stats",
        "/v2/models/{model}/versions/{version}/stats",
    ] {
        cfg.service(route(Method::GET, path, one_model));
    }
}

#[utoipa::path(get, path = "/v2/models/stats", tag = "v2",
    responses((status = 200, description = "Every served model's statistics, in Triton's form", body = Object)))]
async fn all_models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.service.statistics_json(None).unwrap_or_default())
}

#[utoipa::path(get, path = "/v2/models/{model}/stats", tag = "v2", params(super::schemas::ModelParam),
    responses((status = 200, description = "The model's statistics, in Triton's form", body = Object),
        (status = 404, description = "No such model or version", body = crate::api::error_response::ErrorBody)))]
async fn one_model(
    state: web::Data<AppState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.service.statistics_json(Some(&path))?))
}
