//! JSON for the error answers actix writes itself inside the App: extractor
//! rejections (path, query, JSON and body extractors) get the project's
//! error mapping through their config's error handler, and a middleware
//! reshapes any other error answer that is not JSON (and any error a
//! service returns) into `{"error": "...", "code": "..."}`. Answers actix's
//! HTTP/1 parser writes before a request reaches the App (a malformed head,
//! a head over the size limit, a head that arrived too slowly) cannot be
//! shaped here; docs/api.md (Errors) lists them.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};

use crate::error::ApiError;

/// Error handlers for actix's extractors, so a rejection maps through
/// [`ApiError`] like every other error.
pub fn config_extractor_errors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PathConfig::default().error_handler(|e, _| {
        ApiError::NotFound(format!("path does not match this route: {e}")).into()
    }))
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("invalid query: {e}")).into()),
    )
    .app_data(web::JsonConfig::default().error_handler(|e, _| {
        ApiError::from_status(e.status_code().as_u16(), format!("invalid JSON body: {e}")).into()
    }))
    .app_data(web::PayloadConfig::default());
}

/// Middleware: an error answer that is not JSON becomes the JSON error of
/// its status, with the message of the error that made it (else the
/// status's reason).
pub async fn shape(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let response = match next.call(req).await {
        Ok(response) => response.map_into_boxed_body(),
        Err(e) if e.as_error::<ApiError>().is_some() => return Err(e),
        Err(e) => {
            let status = e.as_response_error().status_code();
            return Err(ApiError::from_status(status.as_u16(), e.to_string()).into());
        }
    };
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.response()) {
        return Ok(response);
    }
    let message = response
        .response()
        .error()
        .map(|e| e.to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let shaped = ApiError::from_status(status.as_u16(), message).error_response();
    Ok(response.into_response(shaped))
}

fn is_json(response: &HttpResponse) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::test::{call_service, init_service, read_body_json, TestRequest};
    use actix_web::App;
    use serde_json::Value;

    async fn answer(path: &str) -> (u16, Value) {
        let app = init_service(
            App::new()
                .wrap(from_fn(shape))
                .configure(config_extractor_errors)
                .route(
                    "/text",
                    web::get().to(|| async { HttpResponse::Conflict().body("taken") }),
                )
                .route(
                    "/actix",
                    web::get().to(|| async {
                        Err::<HttpResponse, _>(actix_web::error::ErrorLengthRequired("no length"))
                    }),
                )
                .route(
                    "/number/{n}",
                    web::get().to(|n: web::Path<u32>| async move { n.to_string() }),
                )
                .route(
                    "/query",
                    web::get().to(
                        |q: web::Query<std::collections::HashMap<String, u32>>| async move {
                            format!("{}", q.len())
                        },
                    ),
                )
                .route(
                    "/json",
                    web::post().to(|v: web::Json<Value>| async move { v.to_string() }),
                ),
        )
        .await;
        let request = match path {
            "/json" => TestRequest::post()
                .uri(path)
                .insert_header(("content-type", "application/json"))
                .set_payload("{not json"),
            _ => TestRequest::get().uri(path),
        };
        let response = call_service(&app, request.to_request()).await;
        let status = response.status().as_u16();
        (status, read_body_json(response).await)
    }

    #[actix_web::test]
    async fn actix_error_answers_become_the_json_error_shape() {
        for (path, status, code) in [
            ("/text", 409, "bad_request"),
            ("/actix", 411, "length_required"),
            ("/number/seven", 404, "not_found"),
            ("/query?a=x", 400, "bad_request"),
            ("/json", 400, "bad_request"),
        ] {
            let (got, body) = answer(path).await;
            assert_eq!(
                (got, body["code"].as_str()),
                (status, Some(code)),
                "{path}: {body}"
            );
            assert!(
                !body["error"].as_str().unwrap_or_default().is_empty(),
                "{body}"
            );
        }
    }
}
