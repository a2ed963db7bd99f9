//! Admin routes for operators: scale a model's replicas and reload the
//! configuration and model repository, on a live server. They need
//! `Authorization: Bearer <server.admin_token>`; with no token configured
//! they answer loopback clients only, and only requests that carry no
//! forwarding header: behind a reverse proxy on the same host every client's
//! TCP peer is loopback, so the peer alone proves nothing there.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use gantry_actors::lifecycle::{Reload, ScaleModel};
use serde::Deserialize;

use super::{parse_json, read_body, resource, AppState};
use crate::error::ApiError;

pub fn config_admin_api(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/api/optimized/models/{model}/replicas").route(web::put().to(scale)))
        .service(resource("/api/optimized/reload").route(web::post().to(reload)));
}

/// Lets the request through when it may use admin routes.
pub fn authorize(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    check_admin(state.admin_token.as_deref(), &caller_of(req))
}

/// An HTTP request as an admin caller.
fn caller_of(req: &HttpRequest) -> Caller<'_> {
    let headers = req.headers();
    Caller {
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        peer: req.peer_addr(),
        forwarded: FORWARDING_HEADERS
            .iter()
            .copied()
            .find(|h| headers.contains_key(*h)),
    }
}

/// Who asks for an admin route, whatever the protocol: its
/// `Authorization` value, its TCP peer, and the first forwarding header
/// (HTTP) or metadata key (gRPC) it carries.
pub(crate) struct Caller<'a> {
    pub authorization: Option<&'a str>,
    pub peer: Option<std::net::SocketAddr>,
    pub forwarded: Option<&'static str>,
}

/// The admin check of HTTP and gRPC alike.
pub(crate) fn check_admin(token: Option<&str>, caller: &Caller) -> Result<(), ApiError> {
    match token {
        Some(token) => {
            let given = caller
                .authorization
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    ApiError::Unauthorized("admin routes need Authorization: Bearer <token>".into())
                })?;
            if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::Unauthorized("the admin token is wrong".into()))
            }
        }
        None => {
            let loopback = caller
                .peer
                .is_some_and(|a| a.ip().to_canonical().is_loopback());
            if !loopback {
                return Err(ApiError::Forbidden(
                    "admin routes answer loopback clients only while server.admin_token is unset"
                        .into(),
                ));
            }
            match caller.forwarded {
                Some(forwarded) => Err(ApiError::Forbidden(format!(
                    "this request came through a proxy ({forwarded} header): admin routes \
                     behind a proxy need server.admin_token to be set"
                ))),
                None => Ok(()),
            }
        }
    }
}

/// Headers a proxy adds: their presence means the TCP peer is the proxy,
/// not the client.
pub(crate) const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    replicas: usize,
}

#[utoipa::path(put, path = "/api/optimized/models/{model}/replicas", tag = "admin",
    params(super::openapi::ModelParam), request_body = ScaleBody, security(("admin_token" = [])),
    responses((status = 200, description = "Replicas before and after", body = super::openapi::Scaled), super::openapi::ScaleErrors))]
async fn scale(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let body: ScaleBody = parse_json(&read_body(&state, &req, payload).await?)?;
    if body.replicas > 1024 {
        return Err(ApiError::BadRequest("replicas must be at most 1024".into()));
    }
    let model = path.into_inner();
    let (before, after) = state
        .service
        .serving
        .supervisor
        .send(ScaleModel {
            model: model.clone(),
            replicas: body.replicas,
        })
        .await
        .map_err(|e| ApiError::Internal(format!("supervisor did not answer: {e}")))??;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "model": model,
        "previous_replicas": before,
        "replicas": after,
    })))
}

#[utoipa::path(post, path = "/api/optimized/reload", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "What changed, and what failed to load", body = super::openapi::Reloaded), super::openapi::AdminErrors))]
async fn reload(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let report = state
        .service
        .serving
        .supervisor
        .send(Reload)
        .await
        .map_err(|e| ApiError::Internal(format!("supervisor did not answer: {e}")))??;
    let changes: BTreeMap<&str, &str> = report
        .changes
        .iter()
        .map(|(m, c)| (m.as_str(), c.as_str()))
        .collect();
    let failed: BTreeMap<&str, &str> = report
        .failed
        .iter()
        .map(|e| (e.model.as_str(), e.error.as_str()))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "models": changes, "failed_models": failed })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn from(ip: &str) -> TestRequest {
        TestRequest::default().peer_addr(format!("{ip}:4242").parse().unwrap())
    }

    #[test]
    fn without_a_token_only_loopback_clients_pass() {
        assert!(check_admin(None, &caller_of(&from("127.0.0.1").to_http_request())).is_ok());
        assert!(check_admin(None, &caller_of(&from("[::1]").to_http_request())).is_ok());
        let err = check_admin(None, &caller_of(&from("10.1.2.3").to_http_request())).unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)));
    }

    #[test]
    fn without_a_token_a_proxied_loopback_request_is_refused() {
        for header in ["Forwarded", "X-Forwarded-For", "X-Real-IP"] {
            let proxied = from("127.0.0.1")
                .insert_header((header, "for=203.0.113.7"))
                .to_http_request();
            match check_admin(None, &caller_of(&proxied)) {
                Err(ApiError::Forbidden(why)) => {
                    assert!(why.contains("server.admin_token"), "{why}")
                }
                other => panic!("{header}: {other:?}"),
            }
        }
        let with_token = from("127.0.0.1")
            .insert_header(("X-Forwarded-For", "203.0.113.7"))
            .insert_header(("authorization", "Bearer s3cret"))
            .to_http_request();
        assert!(
            check_admin(Some("s3cret"), &caller_of(&with_token)).is_ok(),
            "a token works through a proxy"
        );
    }

    #[test]
    fn with_a_token_the_bearer_must_match_from_anywhere() {
        let token = Some("s3cret");
        let remote = || from("10.1.2.3");
        assert!(matches!(
            check_admin(token, &caller_of(&remote().to_http_request())),
            Err(ApiError::Unauthorized(_))
        ));
        let wrong = remote()
            .insert_header(("authorization", "Bearer nope"))
            .to_http_request();
        assert!(matches!(
            check_admin(token, &caller_of(&wrong)),
            Err(ApiError::Unauthorized(_))
        ));
        let local_without = from("127.0.0.1").to_http_request();
        assert!(
            check_admin(token, &caller_of(&local_without)).is_err(),
            "a token binds loopback too"
        );
        let right = remote()
            .insert_header(("authorization", "Bearer s3cret"))
            .to_http_request();
        assert!(check_admin(token, &caller_of(&right)).is_ok());
    }
}
