//! The KServe v2 / Open Inference Protocol: server and model metadata,
//! readiness, and inference with JSON tensors or Triton's binary tensor
//! extension (`Inference-Header-Content-Length`), so standard Triton and
//! KServe HTTP clients work unmodified. Inputs and outputs may also be in
//! shared memory regions (Triton's system shared memory extension,
//! [`crate::service::shared_tensors`]). Requests are read in [`decode`], answers
//! written in [`encode`]; this module holds the routes and handlers.

mod decode;
mod encode;

use actix_web::http::header;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;

use super::admin::caller_of;
use super::http_compression::{accepted_encoding, compress, Content, Encoding, Packed};
use super::{cache_allowed, header_priority, header_timeout, read_body, route, AppState};
use crate::error::ApiError;
use crate::request_id::Requested;
use crate::service::models::{ModelMetadata, ModelPath, EXTENSIONS};
use crate::service::shared_tensors::{OutputRegions, SharedRef};
use crate::service::PredictCall;
use decode::InferBody;
pub use decode::{decode, InferPlan};
use encode::{encode, EncodedAnswer, InferAnswer};

const HEADER_LENGTH: &str = "inference-header-content-length";

const MODEL_PREFIXES: [&str; 2] = [
    "/v2/models/{model}",
    "/v2/models/{model}/versions/{version}",
];

/// The inference routes, registered before every other route: actix tries
/// resources in the order they were registered, matching each pattern in
/// turn, and inference is nearly all of the traffic.
pub fn config_v2_infer_api(cfg: &mut web::ServiceConfig) {
    for prefix in MODEL_PREFIXES {
        cfg.service(route(Method::POST, &format!("{prefix}/infer"), infer));
    }
}

pub fn config_v2_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(Method::GET, "/v2", server_metadata));
    for prefix in MODEL_PREFIXES {
        cfg.service(route(Method::GET, prefix, model_metadata))
            .service(route(Method::GET, &format!("{prefix}/ready"), model_ready));
    }
}

#[utoipa::path(get, path = "/v2", tag = "v2",
    responses((status = 200, description = "Server metadata", body = crate::api::schemas::ServerMetadata)))]
async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "name": "gantry",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

#[utoipa::path(get, path = "/v2/models/{model}", tag = "v2", params(crate::api::schemas::ModelParam),
    responses((status = 200, description = "Model metadata", body = ModelMetadata), crate::api::schemas::ModelErrors))]
async fn model_metadata(
    state: web::Data<AppState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.service.model_metadata(&path).await?))
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "v2", params(crate::api::schemas::ModelParam),
    responses((status = 200, description = "The model is ready", body = crate::api::schemas::ModelReady),
        (status = 503, description = "The model cannot take requests (starting, failed)", body = crate::api::schemas::ModelReady),
        crate::api::schemas::ModelErrors))]
async fn model_ready(
    state: web::Data<AppState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    let model = state.service.model_at(&path)?;
    // Out of memory is ready too: its next request loads it.
    let ready = model.is_servable();
    let body = serde_json::json!({ "name": model.name(), "ready": ready });
    Ok(if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}

/// Decodes, predicts and answers; the request's record is finished with
/// the status actually sent, whatever step failed. The prediction's id in
/// the log comes back in `x-prediction-id` (the v2 body has no place for it).
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "v2",
    params(crate::api::schemas::ModelParam, crate::api::schemas::RequestHeaders, crate::api::schemas::BinaryHeader),
    request_body(content((InferBody = "application/json"), (crate::api::schemas::BinaryInferBody = "application/octet-stream"))),
    responses((status = 200, description = "The outputs", content((InferAnswer = "application/json"), (crate::api::schemas::BinaryInferBody = "application/octet-stream"))),
        crate::api::schemas::InferErrors))]
async fn infer(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<ModelPath>,
    payload: web::Payload,
    requested: Requested,
) -> HttpResponse {
    let mut pending = state.service.open(&requested);
    let answered = async {
        let model = state.service.model_at(&path)?;
        pending.attribute(model.clone());
        let body = read_body(&state, &req, payload).await?;
        let timeout = header_timeout(&req)?;
        let priority = header_priority(&req)?;
        let header_length = req.headers().get(HEADER_LENGTH);
        let (mut call, mut plan) =
            decode(header_length, body, requested.id.clone(), timeout, priority)?;
        call.use_cache = cache_allowed(&req);
        let regions = resolve_shared(&state, &req, &mut call, &mut plan)?;
        let prediction = state
            .service
            .predict(model.name(), call, &mut pending)
            .await?;
        regions.write(&prediction.outputs)?;
        respond(encode(&prediction, plan)?, accepted_encoding(req.headers())).await
    }
    .await;
    super::answer::finish(pending, answered)
}

/// When the request names shared memory regions (an admin matter, as
/// registering them is): reads its inputs that are there into `call`, and
/// finds the regions its outputs go to, before anything runs.
fn resolve_shared(
    state: &AppState,
    req: &HttpRequest,
    call: &mut PredictCall,
    plan: &mut InferPlan,
) -> Result<OutputRegions, ApiError> {
    let inputs = std::mem::take(&mut plan.shared_inputs);
    let outputs: Vec<(&str, &SharedRef)> = plan
        .outputs
        .iter()
        .flatten()
        .filter_map(|o| o.shared.as_ref().map(|at| (o.name.as_str(), at)))
        .collect();
    state
        .service
        .resolve_shared(&caller_of(req), call, inputs, outputs)
}

/// The HTTP answer for `answer`, compressed with `encoding` when the
/// client accepts one (`Inference-Header-Content-Length` still counts the
/// uncompressed JSON header, as Triton's clients expect).
async fn respond(
    answer: EncodedAnswer,
    encoding: Option<Encoding>,
) -> Result<HttpResponse, ApiError> {
    let mut response = HttpResponse::Ok();
    match answer.header_length {
        None => response.content_type("application/json"),
        Some(length) => response
            .content_type("application/octet-stream")
            .insert_header((HEADER_LENGTH, length.to_string()))
            .insert_header((header::CACHE_CONTROL, "no-store")),
    };
    let body = Bytes::from(answer.body);
    let Some(encoding) = encoding else {
        return Ok(response.body(body));
    };
    let content = match answer.header_length {
        None => Content::Text,
        Some(_) => Content::Tensors,
    };
    response.insert_header((header::VARY, "accept-encoding"));
    Ok(match compress(body, encoding, content).await? {
        Packed::Compressed(compressed, name) => response
            .insert_header((header::CONTENT_ENCODING, name))
            .body(compressed),
        Packed::Plain(body) => response.body(body),
    })
}
