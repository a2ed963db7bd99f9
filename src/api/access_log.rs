//! The HTTP access log: a middleware that writes each request's access
//! line ([`crate::access_line`]) once it is answered. The model is the one
//! the request's record was attributed to (the edge puts it in the
//! response's extensions, [`ServedModel`]); the trace id is the client's,
//! from a W3C `traceparent` header.

use std::time::Instant;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::HttpMessage;

use crate::access_line::{line, trace_id, Line, TARGET};
use crate::request_id::RequestId;

/// The served model a response answered for, put in its extensions.
#[derive(Debug, Clone)]
pub struct ServedModel(pub String);

/// Middleware (inside `request_id::assign`, so within the request's span
/// and after its id is chosen): the request's access line once it is
/// answered, or once it failed with an error actix turns into the answer.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return next.call(req).await;
    }
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.path().to_string();
    let headers = req.headers();
    let bytes_in = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let trace = headers
        .get("traceparent")
        .and_then(|v| trace_id(v.to_str().ok()?))
        .map(str::to_string);
    let request_id = req.extensions().get::<RequestId>().map(|id| id.0.clone());
    let answered = next.call(req).await;
    let (status, bytes_out, model) = match &answered {
        Ok(response) => (
            response.status().as_u16(),
            match response.response().body().size() {
                BodySize::Sized(n) => Some(n),
                BodySize::None => Some(0),
                BodySize::Stream => None,
            },
            response
                .response()
                .extensions()
                .get::<ServedModel>()
                .map(|m| m.0.clone()),
        ),
        Err(e) => (e.as_response_error().status_code().as_u16(), None, None),
    };
    line(Line {
        protocol: "http",
        method: &method,
        path: &path,
        status,
        model: model.as_deref(),
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        bytes_in,
        bytes_out,
        request_id: request_id.as_deref(),
        trace_id: trace.as_deref(),
    });
    answered
}
