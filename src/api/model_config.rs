//! Triton's model configuration extension:
//! `GET /v2/models/{m}[/versions/{v}]/config` answers the model's
//! configuration in Triton's JSON form (see [`crate::triton::config_json`]).

use actix_web::http::Method;
use actix_web::{web, HttpResponse};

use super::{route, AppState};
use crate::error::ApiError;
use crate::service::models::ModelPath;

pub fn config_model_config_api(cfg: &mut web::ServiceConfig) {
    for path in [
        "/v2/models/{model}/config",
        "/v2/models/{model}/versions/{version}/config",
    ] {
        cfg.service(route(Method::GET, path, config));
    }
}

#[utoipa::path(get, path = "/v2/models/{model}/config", tag = "v2", params(super::schemas::ModelParam),
    responses((status = 200, description = "The model's configuration in Triton's form", body = Object),
        super::schemas::ModelErrors))]
async fn config(
    state: web::Data<AppState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.service.config_json(&path).await?))
}
