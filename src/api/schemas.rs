//! The OpenAPI pieces handlers name in their `#[utoipa::path]` attributes:
//! the error answers of each route, the request headers, the `{model}`
//! parameter, the upload forms, and the bodies that handlers build untyped.
//! A leaf: it names no handler, so handlers and the document that gathers
//! them ([`super::openapi`]) both use it.

use std::collections::BTreeMap;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{Ref, RefOr, Required};
use utoipa::{IntoParams, IntoResponses, PartialSchema, ToSchema};

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

/// `GET /v2`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ServerMetadata {
    name: String,
    version: String,
    extensions: Vec<String>,
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
