//! `GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API. It is
//! assembled from the `#[utoipa::path]` attributes on the handlers and the
//! `ToSchema` derives on their body types (what handlers share is in
//! [`super::schemas`]); the admin token, the versioned model routes and the
//! request examples are added here.

use std::sync::OnceLock;

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{PathItem, Required};
use utoipa::{Modify, OpenApi};

use super::error_response::ErrorBody;
use super::route;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gantry",
        description = "Inference over HTTP: JSON tensors and file uploads, the KServe v2 \
                       protocol, health, statistics and admin routes. Every error answers \
                       `{\"error\": \"...\", \"code\": \"...\"}`."
    ),
    paths(
        super::predict::predict,
        super::upload::predict_batch,
        super::predictions::prediction,
        super::health::health,
        super::stats::stats,
        super::metrics::metrics,
        super::admin::scale,
        super::admin::reload,
        super::v2::server_metadata,
        super::health::live,
        super::health::ready,
        super::v2::model_metadata,
        super::v2::model_ready,
        super::model_config::config,
        super::model_statistics::all_models,
        super::model_statistics::one_model,
        super::v2::infer,
        super::model_repository::index,
        super::model_repository::load,
        super::model_repository::unload,
        super::shm_regions::register,
        super::shm_regions::unregister,
        super::shm_regions::unregister_all,
        super::shm_regions::status_all,
        super::shm_regions::status,
        super::shm_regions::cuda_status_all,
        super::shm_regions::cuda_status,
        super::shm_regions::cuda_register,
        super::shm_regions::cuda_unregister,
        super::shm_regions::cuda_unregister_all,
        openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&AdminToken, &VersionedModelRoutes, &Examples),
    tags(
        (name = "predict", description = "Predictions on JSON tensors and uploaded files"),
        (name = "v2", description = "KServe v2 / Open Inference Protocol"),
        (name = "operations", description = "Health, statistics and metrics"),
        (name = "admin", description = "Scaling, reload, model load/unload and shared memory regions (admin token)"),
    )
)]
pub struct ApiDoc;

pub fn config_openapi_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(Method::GET, "/openapi.json", openapi_json));
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = Object)))]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

/// The document as JSON, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serialises")
    })
}

/// The bearer token of the admin routes.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "server.admin_token; while it is unset, loopback clients pass without one",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("admin_token", SecurityScheme::Http(scheme));
    }
}

/// Every `/v2/models/{model}...` route is also served under
/// `/v2/models/{model}/versions/{version}...` (the same handler).
struct VersionedModelRoutes;

impl Modify for VersionedModelRoutes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let copies: Vec<(String, PathItem)> = openapi
            .paths
            .paths
            .iter()
            .filter_map(|(path, item)| {
                let rest = path.strip_prefix("/v2/models/{model}")?;
                let mut item = item.clone();
                for operation in operations(&mut item) {
                    operation.operation_id = operation
                        .operation_id
                        .take()
                        .map(|id| format!("{id}_version"));
                    let parameters = operation.parameters.get_or_insert_with(Vec::new);
                    parameters.insert(0, version_param());
                }
                Some((
                    format!("/v2/models/{{model}}/versions/{{version}}{rest}"),
                    item,
                ))
            })
            .collect();
        openapi.paths.paths.extend(copies);
    }
}

fn version_param() -> Parameter {
    ParameterBuilder::new()
        .name("version")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(
            "The model's version (`version` in model.toml, default `1`)",
        ))
        .example(Some(serde_json::json!("1")))
        .build()
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Request examples that a demo model answers: `tiny-classifier` takes
/// `features`, FP32 `[batch, 64]`.
struct Examples;

impl Modify for Examples {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let features: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let examples = [
            (
                "/api/optimized/predict",
                serde_json::json!({
                    "model": "tiny-classifier",
                    "inputs": {"features": {"shape": [1, 64], "datatype": "FP32", "data": features}},
                }),
            ),
            (
                "/v2/models/{model}/infer",
                serde_json::json!({
                    "inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": features}],
                }),
            ),
        ];
        for (path, example) in examples {
            let body = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.post.as_mut())
                .and_then(|operation| operation.request_body.as_mut())
                .and_then(|body| body.content.get_mut("application/json"));
            if let Some(content) = body {
                content.example = Some(example);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/api/optimized/predict",
            "/api/optimized/predict/batch",
            "/api/optimized/predictions/{request_id}",
            "/api/optimized/health",
            "/api/optimized/stats",
            "/api/optimized/models/{model}/replicas",
            "/api/optimized/reload",
            "/metrics",
            "/openapi.json",
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/{model}",
            "/v2/models/{model}/ready",
            "/v2/models/{model}/infer",
            "/v2/models/{model}/versions/{version}",
            "/v2/models/{model}/versions/{version}/ready",
            "/v2/models/{model}/versions/{version}/infer",
            "/v2/repository/index",
            "/v2/repository/models/{model}/load",
            "/v2/repository/models/{model}/unload",
        ] {
            assert!(paths.contains_key(path), "{path} is not described");
        }
    }

    #[test]
    fn every_error_answer_is_the_error_body() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let mut errors = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    // Readiness routes answer 503 with their own body.
                    let readiness = path.ends_with("health") || path.ends_with("ready");
                    if status.starts_with('2') || (status == "503" && readiness) {
                        continue;
                    }
                    errors += 1;
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
        assert!(errors > 50, "{errors} error answers described");
        let schema = &doc["components"]["schemas"]["ErrorBody"];
        assert_eq!(schema["required"], serde_json::json!(["error", "code"]));
    }
}
