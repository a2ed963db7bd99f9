//! Triton's model configuration extension:
//! `GET /v2/models/{m}[/versions/{v}]/config` answers the model's
//! configuration in Triton's JSON form (see [`crate::triton::model_config`]).

use actix_web::{web, HttpResponse};
use gantry_actors::batcher::GetBatcherSnapshot;
use gantry_actors::InferError;

use super::v2::{model_at, ModelPath};
use super::{resource, AppState};
use crate::error::ApiError;
use crate::triton::model_config::model_config;

pub fn config_model_config_api(cfg: &mut web::ServiceConfig) {
    for path in [
        "/v2/models/{model}/config",
        "/v2/models/{model}/versions/{version}/config",
    ] {
        cfg.service(resource(path).route(web::get().to(config)));
    }
}

#[utoipa::path(get, path = "/v2/models/{model}/config", tag = "v2", params(super::openapi::ModelParam),
    responses((status = 200, description = "The model's configuration in Triton's form", body = Object),
        super::openapi::ModelErrors))]
async fn config(
    state: web::Data<AppState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(config_json(&state, &path).await?))
}

/// The configuration of the model at `path`, in Triton's JSON form (HTTP
/// answers it; gRPC reads it into its `ModelConfig` message).
pub(crate) async fn config_json(
    state: &AppState,
    path: &ModelPath,
) -> Result<serde_json::Value, ApiError> {
    let model = model_at(state, path)?;
    // The signature comes from a session: known once a replica has loaded.
    let signature = model
        .state
        .signature()
        .ok_or_else(|| InferError::ModelNotReady(model.name().to_string()))?;
    let snapshot = model
        .batcher
        .send(GetBatcherSnapshot)
        .await
        .map_err(|_| InferError::ModelNotReady(model.name().to_string()))?;
    let devices: Vec<_> = snapshot.replicas.iter().filter_map(|r| r.device).collect();
    Ok(model_config(&model, signature, &devices))
}
