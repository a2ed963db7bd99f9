//! `GET /api/optimized/predictions/{id}`: records of the prediction log.
//!
//! `id` may be a prediction id (the `prediction_id` of an answer, or its
//! `x-prediction-id` header) or a request id the server made itself: both
//! are unguessable, so they need no credentials and answer that one record.
//! A request id the client chose (`x-request-id`) may be guessable and may be
//! shared by many predictions: it answers only with admin rights (as the
//! admin routes), and then lists every record with that id.

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::admin::authorize;
use super::{route, AppState};
use crate::error::ApiError;
use crate::request_id::as_uuid;
use crate::store::{Lookup, StoredPrediction};

/// Most records one look-up by a client's request id lists.
pub const MAX_LISTED: usize = 1000;

pub fn config_predictions_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(
        Method::GET,
        "/api/optimized/predictions/{id}",
        prediction,
    ));
}

/// The records of a client's request id.
#[derive(Serialize)]
struct Listed<'a> {
    request_id: &'a str,
    /// Oldest first, at most [`MAX_LISTED`].
    predictions: Vec<StoredPrediction>,
}

#[utoipa::path(get, path = "/api/optimized/predictions/{request_id}", tag = "predict",
    params(("request_id" = String, Path, description = "The request id the answer carried")),
    responses((status = 200, description = "The prediction's record", body = Object), super::schemas::RecordErrors))]
async fn prediction(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let service = &state.service;
    let id = path.into_inner();
    let open = Lookup {
        prediction_id: uuid::Uuid::parse_str(&id).ok(),
        request_id: &id,
        client_chosen: false,
        limit: 1,
    };
    if let Some(record) = service.find_predictions(open).await?.into_iter().next() {
        return Ok(HttpResponse::Ok().json(record));
    }
    // Not an unguessable id: maybe a client's, which needs admin rights.
    authorize(&state, &req)?;
    let everything = Lookup {
        // Rows written before prediction ids were keyed by this UUID.
        prediction_id: Some(as_uuid(&id)),
        request_id: &id,
        client_chosen: true,
        limit: MAX_LISTED,
    };
    let predictions = service.find_predictions(everything).await?;
    if predictions.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no prediction with id or request id '{id}'"
        )));
    }
    Ok(HttpResponse::Ok().json(Listed {
        request_id: &id,
        predictions,
    }))
}
