//! Draining on shutdown, at the HTTP edge ([`crate::service::shutdown`]
//! says when): every request is admitted (counted) by the service; once it
//! refuses new requests, each new one (on a new connection or on an open
//! keep-alive one) is answered at once with a JSON 503 `shutting_down` and
//! `Connection: close`; health and readiness probes still run (and answer
//! 503 themselves).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use gantry_actors::InferError;

use super::AppState;
use crate::error::ApiError;

/// Probes that keep running while the server drains.
const PROBES: [&str; 3] = [
    "/api/optimized/health",
    "/v2/health/live",
    "/v2/health/ready",
];

/// Middleware: admits and counts requests, or answers 503 while draining.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let shutdown = state.service.shutdown();
    let draining = || shutdown.is_refusing();
    let admitted = shutdown.admit();
    let mut response = if !draining() {
        let response = next.call(req).await?.map_into_boxed_body();
        drop(admitted);
        response
    } else {
        drop(admitted);
        if PROBES.contains(&req.path()) {
            next.call(req).await?.map_into_boxed_body()
        } else {
            let (req, _) = req.into_parts();
            let answer = ApiError::Infer(InferError::ShuttingDown).error_response();
            ServiceResponse::new(req, answer)
        }
    };
    if draining() {
        // The connection closes after this answer instead of idling until
        // the server stops.
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}
