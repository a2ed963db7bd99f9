//! `GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API. It is
//! assembled from the `#[utoipa::path]` attributes on the handlers and the
//! `ToSchema` derives on their body types; what they share is described
//! here: the error answers of each route, the request headers, the upload
//! forms, the admin token, and the bodies that handlers build untyped.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{PathItem, Ref, RefOr, Required};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

use super::resource;
use crate::error::ErrorBody;

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
        super::files::predict_batch,
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
        super::statistics::all_models,
        super::statistics::one_model,
        super::v2::infer,
        super::repository::index,
        super::repository::load,
        super::repository::unload,
        super::shared_memory::register,
        super::shared_memory::unregister,
        super::shared_memory::unregister_all,
        super::shared_memory::status_all,
        super::shared_memory::status,
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
    cfg.service(resource("/openapi.json").route(web::get().to(openapi_json)));
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

/// What each status of an error answer means.
fn error_description(status: u16) -> &'static str {
    match status {
        400 => "Malformed request: body syntax, a missing or unknown field, a bad header",
        401 => "No admin token, or a wrong one",
        403 => "An admin route from a non-loopback client while no admin token is set",
        404 => "Unknown model, version or record",
        413 => "The body exceeds server.body_limit_mb",
        415 => "A content type or file type the route cannot read",
        422 => {
            "Wrong input name, datatype or shape, an unknown output, or a file that cannot be used"
        }
        429 => "The model's queue or the media pool is full; retry after Retry-After seconds",
        500 => "Inference failed, or an internal error",
        503 => "The model is not ready, a dependency is down, or the server is shutting down",
        504 => "The request's deadline passed before it ran",
        _ => "Error",
    }
}

/// Error answers with the given statuses, each with the error body.
fn error_responses(statuses: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|&status| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            let mut response = ResponseBuilder::new()
                .description(error_description(status))
                .content("application/json", content);
            let header = |description: &str| {
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some(description))
                    .build()
            };
            if status == 429 {
                response = response.header("Retry-After", header("Seconds to wait"));
            }
            if status == 401 {
                response = response.header("WWW-Authenticate", header("Bearer"));
            }
            (status.to_string(), RefOr::T(response.build()))
        })
        .collect()
}

/// A named set of error answers for `responses(...)` of a route.
macro_rules! error_set {
    ($($(#[$doc:meta])* $name:ident = [$($status:literal),*];)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                error_responses(&[$($status),*])
            }
        }
    )*};
}

error_set! {
    /// A prediction: JSON tensors or one uploaded file.
    PredictErrors = [400, 404, 413, 415, 422, 429, 500, 503, 504];
    /// A batch upload: the form and the model (each file fails in its entry).
    BatchErrors = [400, 404, 413, 415, 422, 429, 500, 503, 504];
    /// A KServe v2 inference (401 and 403: one that names shared memory
    /// regions, without admin authorization).
    InferErrors = [400, 401, 403, 404, 413, 415, 422, 429, 500, 503, 504];
    /// A prediction record.
    RecordErrors = [401, 403, 404, 503];
    /// A model's metadata or readiness.
    ModelErrors = [404, 503];
    /// Scaling a model.
    ScaleErrors = [400, 401, 403, 404, 413, 500, 503];
    /// Reload, load and unload.
    AdminErrors = [400, 401, 403, 404, 500, 503];
    /// Stats and metrics.
    ServerErrors = [500, 503];
}

fn header_param(name: &str, schema: ObjectBuilder, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .schema(Some(schema))
        .description(Some(description))
        .build()
}

/// The headers every prediction route reads.
pub struct RequestHeaders;

impl IntoParams for RequestHeaders {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            header_param(
                "x-request-timeout-ms",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
                "Deadline in milliseconds; the body's own timeout wins",
            ),
            header_param(
                "x-priority",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["high", "normal", "low"])),
                "Queue priority; the body's own priority wins",
            ),
            header_param(
                "x-request-id",
                ObjectBuilder::new().schema_type(Type::String),
                "Request id echoed on the answer (letters, digits, `-_.:`, at most 128); \
                 another value is replaced by a generated one",
            ),
            header_param(
                "cache-control",
                ObjectBuilder::new().schema_type(Type::String),
                "`no-cache` or `no-store` bypasses the result cache",
            ),
        ]
    }
}

/// Triton's binary tensor extension: the length of the JSON header.
pub struct BinaryHeader;

impl IntoParams for BinaryHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![header_param(
            "inference-header-content-length",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
            "Bytes of JSON at the start of the body; binary tensor data follows",
        )]
    }
}

/// The `{model}` path segment.
pub struct ModelParam;

impl IntoParams for ModelParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![ParameterBuilder::new()
            .name("model")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some("The model's name (its folder in the repository)"))
            .example(Some(serde_json::json!("tiny-classifier")))
            .build()]
    }
}

/// A multipart upload to `/api/optimized/predict`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    model: String,
    /// A `.npy` array, an image (PNG, JPEG, TIFF, WebP) or audio (WAV, FLAC, MP3, Ogg).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Mask threshold of segmentation models, a finite number.
    threshold: Option<f32>,
    /// Classes answered by classifiers, at least 1.
    #[schema(minimum = 1)]
    top_k: Option<u64>,
    /// `high`, `normal` or `low`.
    priority: Option<String>,
    #[schema(minimum = 1)]
    timeout_ms: Option<u64>,
    /// `true`, `false`, `1` or `0`.
    cache: Option<String>,
}

/// A multipart upload to `/api/optimized/predict/batch`: several `file` parts.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchUploadForm {
    model: String,
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
    threshold: Option<f32>,
    #[schema(minimum = 1)]
    top_k: Option<u64>,
    priority: Option<String>,
    #[schema(minimum = 1)]
    timeout_ms: Option<u64>,
    cache: Option<String>,
}

/// A body of Triton's binary tensor extension: JSON, then tensor bytes.
pub struct BinaryInferBody;

impl PartialSchema for BinaryInferBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for BinaryInferBody {}

/// The answer of `/api/optimized/predict`: tensors for a JSON request, the
/// file's answer for an upload.
pub struct PredictOk;

impl PartialSchema for PredictOk {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(super::predict::PredictAnswer::name()))
            .item(Ref::from_schema_name(super::files::FileAnswer::name()))
            .into()
    }
}

impl ToSchema for PredictOk {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use super::files::FileAnswer;
        use super::predict::PredictAnswer;
        schemas.push((PredictAnswer::name().into(), PredictAnswer::schema()));
        PredictAnswer::schemas(schemas);
        schemas.push((FileAnswer::name().into(), FileAnswer::schema()));
        FileAnswer::schemas(schemas);
    }
}

/// `GET /v2`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ServerMetadata {
    name: String,
    version: String,
    extensions: Vec<String>,
}

/// `GET /v2/models/{model}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModelMetadata<'a> {
    name: String,
    versions: Vec<String>,
    platform: String,
    inputs: Vec<super::v2::TensorMetadata<'a>>,
    outputs: Vec<super::v2::TensorMetadata<'a>>,
}

/// `GET /v2/models/{model}/ready`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModelReady {
    name: String,
    ready: bool,
}

/// `GET /v2/health/live`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Live {
    live: bool,
}

/// `GET /v2/health/ready`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Ready {
    ready: bool,
}

/// `PUT /api/optimized/models/{model}/replicas`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Scaled {
    model: String,
    previous_replicas: u64,
    replicas: u64,
}

/// `POST /api/optimized/reload`: each changed model with its change, and
/// each folder that failed to load with the reason.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Reloaded {
    models: BTreeMap<String, String>,
    failed_models: BTreeMap<String, String>,
}

/// `POST /v2/repository/models/{model}/load`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Loaded {
    change: String,
}

/// `POST /v2/repository/models/{model}/unload`: an empty object.
#[derive(ToSchema)]
pub struct Unloaded {}

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
