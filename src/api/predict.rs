//! `POST /api/optimized/predict`: JSON tensors answered as tensors; a
//! multipart upload (a `.npy` array, an image or an audio clip) is handed to
//! [`upload`](super::upload).

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::header;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use gantry_actors::{Priority, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use utoipa::openapi::schema::{AnyOfBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::tensor_json::{round3, JsonTensorOut};
use super::{cache_allowed, header_priority, header_timeout, read_body, route, AppState};
use crate::codec::{object_with_array, tensor_from_json, LiftedBody};
use crate::error::ApiError;
use crate::request_id::Requested;
use crate::service::predict::select_outputs;
use crate::service::{PredictCall, Prediction};

pub fn config_predict_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(Method::POST, "/api/optimized/predict", predict));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PredictBody<'a> {
    model: String,
    #[serde(borrow)]
    inputs: BTreeMap<String, JsonTensorIn<'a>>,
    /// Only these outputs in the answer; all when absent.
    #[serde(default)]
    outputs: Option<Vec<String>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// `false` bypasses the result cache for this request.
    #[serde(default)]
    cache: Option<bool>,
    /// `"high"`, `"normal"` or `"low"`; overrides the `x-priority` header.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    priority: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct JsonTensorIn<'a> {
    shape: Vec<usize>,
    datatype: String,
    /// Values, flat in row-major order or nested by dimension.
    #[serde(borrow)]
    #[schema(value_type = Vec<Value>)]
    data: &'a RawValue,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Timings {
    queue: f64,
    inference: f64,
    total: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PredictAnswer<'a> {
    request_id: &'a str,
    /// The prediction's own id in the prediction log.
    prediction_id: String,
    model: &'a str,
    model_version: &'a str,
    batch_size: Option<usize>,
    replica: Option<usize>,
    timings_ms: Timings,
    cache: Option<&'static str>,
    /// The last member: [`answer_json`] writes it.
    outputs: BTreeMap<&'a str, JsonTensorOut<'a>>,
}

/// A JSON tensor without its data, which [`object_with_array`] appends.
#[derive(Serialize)]
struct JsonTensorHead<'a> {
    shape: &'a [usize],
    datatype: &'static str,
}

/// A decoded request: which model, which call, which outputs to return.
struct Decoded {
    model: String,
    call: PredictCall,
    outputs: Option<Vec<String>>,
    /// The priority the body or form named, if it named one.
    priority: Option<Priority>,
}

/// Decodes, predicts and answers; the request's record is finished with
/// the status actually sent, whatever step failed.
#[utoipa::path(post, path = "/api/optimized/predict", tag = "predict",
    params(super::schemas::RequestHeaders),
    request_body(content((PredictBody = "application/json"), (super::schemas::UploadForm = "multipart/form-data"))),
    responses((status = 200, description = "The prediction", body = PredictOk), super::schemas::PredictErrors))]
async fn predict(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    requested: Requested,
) -> HttpResponse {
    if content_type(&req).starts_with("multipart/form-data") {
        return super::upload::predict_upload(&state, &req, payload, &requested).await;
    }
    let mut pending = state.service.open(&requested);
    let answered = async {
        let decoded = decode(&state, &req, payload, &requested.id).await?;
        let prediction = state
            .service
            .predict(&decoded.model, decoded.call, &mut pending)
            .await?;
        let id = pending.prediction_id().to_string();
        answer(&requested.id, id, &prediction, decoded.outputs.as_deref())
    }
    .await;
    super::answer::finish(pending, answered)
}

async fn decode(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    request_id: &str,
) -> Result<Decoded, ApiError> {
    let header_timeout = header_timeout(req)?;
    let header_priority = header_priority(req)?;
    let content_type = content_type(req);
    let mut decoded = if content_type.starts_with("application/json")
        || content_type.contains("+json")
    {
        let body = read_body(state, req, payload).await?;
        decode_json(&body, request_id)?
    } else {
        return Err(ApiError::UnsupportedMedia(format!(
            "content type '{content_type}' is not accepted; send application/json or multipart/form-data"
        )));
    };
    if decoded.call.timeout.is_none() {
        decoded.call.timeout = header_timeout;
    }
    decoded.call.priority = decoded.priority.or(header_priority);
    decoded.call.use_cache &= cache_allowed(req);
    Ok(decoded)
}

/// The request's content type, lower case; JSON when absent.
fn content_type(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase()
}

fn decode_json(body: &[u8], request_id: &str) -> Result<Decoded, ApiError> {
    let lifted = LiftedBody::new(body);
    let parsed: PredictBody = lifted.parse()?;
    let inputs = parsed
        .inputs
        .into_iter()
        .map(|(name, t)| {
            let tensor = tensor_from_json(&name, &t.datatype, t.shape, lifted.data(t.data))
                .map_err(|e| lifted.refused::<PredictBody>(e))?;
            Ok((name, tensor))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Decoded {
        model: parsed.model,
        call: PredictCall {
            request_id: request_id.to_string(),
            inputs,
            timeout: positive_ms(parsed.timeout_ms, "timeout_ms")?,
            use_cache: parsed.cache.unwrap_or(true),
            priority: None,
            sequence: None,
            pin: None,
        },
        outputs: parsed.outputs,
        priority: parsed.priority.as_ref().map(body_priority).transpose()?,
    })
}

/// The body's `priority` field: a level's name.
fn body_priority(value: &Value) -> Result<Priority, ApiError> {
    let parsed: Result<Priority, _> = match value {
        Value::String(name) => name.parse(),
        other => other.to_string().parse(),
    };
    parsed.map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn positive_ms(value: Option<u64>, field: &str) -> Result<Option<Duration>, ApiError> {
    match value {
        Some(0) => Err(ApiError::BadRequest(format!("{field} must be at least 1"))),
        other => Ok(other.map(Duration::from_millis)),
    }
}

fn answer(
    request_id: &str,
    prediction_id: String,
    p: &Prediction,
    only: Option<&[String]>,
) -> Result<HttpResponse, ApiError> {
    let mut outputs = select_outputs(&p.outputs, only)?;
    // By name, each once, as a map of them serializes.
    outputs.sort_by(|a, b| a.0.cmp(&b.0));
    outputs.dedup_by(|a, b| a.0 == b.0);
    let head = PredictAnswer {
        request_id,
        prediction_id,
        model: p.model.name(),
        model_version: &p.model.spec.version,
        outputs: BTreeMap::new(),
        batch_size: p.batch_size,
        replica: p.replica,
        timings_ms: Timings {
            queue: round3(p.queue_ms),
            inference: round3(p.inference_ms),
            total: round3(p.total_ms),
        },
        cache: p.cache.map(|level| level.as_str()),
    };
    let body = answer_json(&head, &outputs).map_err(ApiError::Internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// The answer's JSON: `head` (its `outputs` empty) through serde, then each
/// output, its data array written by the codec straight into the buffer
/// ([`object_with_array`]) rather than through serde per element.
fn answer_json(head: &PredictAnswer, outputs: &[&(String, Tensor)]) -> Result<Vec<u8>, String> {
    let mut json = serde_json::to_vec(head).map_err(|e| e.to_string())?;
    // `outputs` is the answer's last member: `..."outputs":{}}`.
    if !json.ends_with(b"{}}") {
        return Err("the answer's outputs are not its last member".into());
    }
    json.truncate(json.len() - 2);
    for (index, (name, tensor)) in outputs.iter().enumerate() {
        if index > 0 {
            json.push(b',');
        }
        serde_json::to_writer(&mut json, name).map_err(|e| e.to_string())?;
        json.push(b':');
        let head = JsonTensorHead {
            shape: &tensor.shape,
            datatype: tensor.dtype.as_str(),
        };
        object_with_array(&mut json, &head, "data", tensor)?;
    }
    json.extend_from_slice(b"}}");
    Ok(json)
}

/// The answer of `/api/optimized/predict`: tensors for a JSON request, the
/// file's answer for an upload.
pub struct PredictOk;

impl PartialSchema for PredictOk {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(PredictAnswer::name()))
            .item(Ref::from_schema_name(super::upload::FileAnswer::name()))
            .into()
    }
}

impl ToSchema for PredictOk {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use super::upload::FileAnswer;
        schemas.push((PredictAnswer::name().into(), PredictAnswer::schema()));
        PredictAnswer::schemas(schemas);
        schemas.push((FileAnswer::name().into(), FileAnswer::schema()));
        FileAnswer::schemas(schemas);
    }
}
