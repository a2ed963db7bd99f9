//! A prediction's HTTP answer, finished at the edge: an error becomes its
//! JSON response (the one mapping, [`super::error_response`]), a request
//! that reached its model gets the `x-prediction-id` header, the access log
//! learns the model, and the request's record ([`Pending`]) is finished
//! with the status actually sent.

use actix_web::http::header::HeaderValue;
use actix_web::{HttpResponse, ResponseError};

use super::access_log::ServedModel;
use crate::error::ApiError;
use crate::request_id::PREDICTION_HEADER;
use crate::service::Pending;

/// Sends `answer` for the request `pending` records.
pub fn finish(pending: Pending, answer: Result<HttpResponse, ApiError>) -> HttpResponse {
    let (mut response, error) = match answer {
        Ok(response) => (response, None),
        Err(e) => (e.error_response(), Some(e.to_string())),
    };
    if pending.reached_model() {
        if let Ok(value) = HeaderValue::from_str(&pending.prediction_id().to_string()) {
            response.headers_mut().insert(PREDICTION_HEADER, value);
        }
    }
    if let Some(model) = pending.model_name() {
        response
            .extensions_mut()
            .insert(ServedModel(model.to_string()));
    }
    pending.finish_with(response.status().as_u16(), error);
    response
}
