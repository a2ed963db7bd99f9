//! `GET /api/optimized/predictions/{request_id}`: one record of the
//! prediction log, by the request id the answer carried (404 if none).

use actix_web::{web, HttpResponse};

use super::{resource, AppState};
use crate::error::ApiError;
use crate::request_id::as_uuid;

pub fn config_predictions_api(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/api/optimized/predictions/{request_id}").route(web::get().to(prediction)),
    );
}

#[utoipa::path(get, path = "/api/optimized/predictions/{request_id}", tag = "predict",
    params(("request_id" = String, Path, description = "The request id the answer carried")),
    responses((status = 200, description = "The prediction's record", body = Object), super::openapi::RecordErrors))]
async fn prediction(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let Some(log) = &state.service.log else {
        return Err(ApiError::NotFound(
            "no prediction log is configured (store.database_url or DATABASE_URL)".into(),
        ));
    };
    let id = path.into_inner();
    match log.get(as_uuid(&id)).await {
        Ok(Some(record)) => Ok(HttpResponse::Ok().json(record)),
        Ok(None) => Err(ApiError::NotFound(format!(
            "no prediction with request id '{id}'"
        ))),
        Err(e) => Err(ApiError::Unavailable(format!(
            "the prediction log is unreachable: {e}"
        ))),
    }
}
