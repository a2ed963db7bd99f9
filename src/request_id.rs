//! Request ids: taken from the client's `x-request-id` header (when it is a
//! reasonable token) or generated, kept in the request's extensions, put on
//! every response, and recorded on the request's tracing span. Also the ids
//! the server makes for each prediction, which key the prediction log.

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Header of the answer naming the prediction's id in the log.
pub const PREDICTION_HEADER: HeaderName = HeaderName::from_static("x-prediction-id");

/// The UUID under which rows were keyed before prediction ids existed: the
/// request id itself when it is a UUID, else a name-based (v5) UUID of it.
pub fn as_uuid(id: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(id)
        .unwrap_or_else(|_| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes()))
}

/// A new prediction id: a time-ordered UUID (version 7: milliseconds since
/// the epoch, then random bits), unguessable and kind to the table's index.
pub fn new_prediction_id() -> uuid::Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random = uuid::Uuid::new_v4();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random.as_bytes()[6..]);
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
}

/// The id of the request being handled.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The request's id and whether the client chose it (`x-request-id`) or the
/// server made it; what a prediction log row records.
#[derive(Debug, Clone)]
pub struct Requested {
    pub id: String,
    pub from_client: bool,
}

/// Whether a client's request id is kept: 1-128 characters of letters,
/// digits and `-_.:`.
pub fn acceptable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Middleware: assigns the id, opens the request span, sets the header.
pub async fn assign(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let chosen = req
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_id(v))
        .map(str::to_string);
    let from_client = chosen.is_some();
    let id = chosen.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(Requested {
        id: id.clone(),
        from_client,
    });
    // The request's span, with OpenTelemetry's HTTP server conventions
    // for the traces (crate::telemetry), continuing the client's trace.
    let method = req.method().to_string();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        path = %req.path(),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %req.path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let tracing = crate::telemetry::enabled();
    if tracing {
        let headers = req.headers();
        let parent =
            crate::telemetry::parent_from(|key| headers.get(key).and_then(|v| v.to_str().ok()));
        let _ = span.set_parent(parent);
    }
    let answered = next.call(req).instrument(span.clone()).await;
    let status = match &answered {
        Ok(response) => response.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    let route = answered
        .as_ref()
        .ok()
        .and_then(|r| r.request().match_pattern());
    // The span has started (its parent is set), so its name is updated on
    // the OpenTelemetry span itself.
    if tracing {
        span.context().span().update_name(format!(
            "{method} {}",
            route.as_deref().unwrap_or("unmatched")
        ));
    }
    if let Some(route) = &route {
        span.record("http.route", route.as_str());
    }
    span.record("http.response.status_code", i64::from(status.as_u16()));
    let mut response = answered?;
    span.in_scope(|| {
        tracing::debug!(status = status.as_u16(), "response");
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    Ok(response)
}

impl FromRequest for RequestId {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(uuid::Uuid::new_v4().to_string()));
        std::future::ready(Ok(id))
    }
}

impl FromRequest for Requested {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id = req
            .extensions()
            .get::<Requested>()
            .cloned()
            .unwrap_or_else(|| Requested {
                id: uuid::Uuid::new_v4().to_string(),
                from_client: false,
            });
        std::future::ready(Ok(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prediction_ids_are_version_7_and_distinct() {
        let (a, b) = (new_prediction_id(), new_prediction_id());
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
    }
}
