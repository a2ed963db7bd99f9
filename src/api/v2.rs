//! The KServe v2 / Open Inference Protocol: server and model metadata,
//! readiness, and inference with JSON tensors or Triton's binary tensor
//! extension (`Inference-Header-Content-Length`), so standard Triton and
//! KServe HTTP clients work unmodified. Inputs and outputs may also be in
//! shared memory regions (Triton's system shared memory extension,
//! [`super::shared_memory`]).

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use gantry_actors::signature::TensorSpec;
use gantry_actors::{ModelHandle, Priority, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::admin::authorize;
use super::encoding::{accepted_encoding, compress, Encoding};
use super::predict::select_outputs;
use super::shared_memory::{self as shm, OutputRegions, SharedInput, SharedRef};
use super::{cache_allowed, header_priority, header_timeout, read_body, resource, AppState};
use crate::codec::{
    check_bools, object_with_array, parse_datatype, tensor_from_json, JsonData, LiftedBody,
};
use crate::error::ApiError;
use crate::request_id::Requested;
use crate::service::sequences::SequenceCall;
use crate::service::{PredictCall, Prediction};
use crate::triton::classification::top_classes;

const HEADER_LENGTH: &str = "inference-header-content-length";

pub fn config_v2_api(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v2").route(web::get().to(server_metadata)));
    for prefix in [
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
    ] {
        cfg.service(resource(prefix).route(web::get().to(model_metadata)))
            .service(resource(&format!("{prefix}/ready")).route(web::get().to(model_ready)))
            .service(resource(&format!("{prefix}/infer")).route(web::post().to(infer)));
    }
}

/// A model in a v2 path, with the version when the path names one.
#[derive(Deserialize)]
pub(super) struct ModelPath {
    pub model: String,
    pub version: Option<String>,
}

#[utoipa::path(get, path = "/v2", tag = "v2",
    responses((status = 200, description = "Server metadata", body = super::openapi::ServerMetadata)))]
async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "name": "gantry",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": super::EXTENSIONS,
    }))
}

/// The model named in the path, checking the version when one is given.
pub(super) fn model_at(
    state: &AppState,
    path: &ModelPath,
) -> Result<std::sync::Arc<ModelHandle>, ApiError> {
    let model = state.service.model(&path.model)?;
    match &path.version {
        Some(v) if *v != model.spec.version => Err(ApiError::NotFound(format!(
            "model '{}' has no version '{v}'; it serves version '{}'",
            path.model, model.spec.version
        ))),
        _ => Ok(model),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TensorMetadata<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: Vec<i64>,
}

/// The tensors clients see: those the server fills or keeps (a sequence
/// model's control and state tensors) are left out, as `hidden` says.
fn tensor_metadata<'a>(
    specs: &'a [TensorSpec],
    hidden: impl Fn(&str) -> bool,
) -> Vec<TensorMetadata<'a>> {
    specs
        .iter()
        .filter(|s| !hidden(&s.name))
        .map(|s| TensorMetadata {
            name: &s.name,
            datatype: s.dtype.as_str(),
            shape: s.shape_i64(),
        })
        .collect()
}

#[utoipa::path(get, path = "/v2/models/{model}", tag = "v2", params(super::openapi::ModelParam),
    responses((status = 200, description = "Model metadata", body = super::openapi::ModelMetadata), super::openapi::ModelErrors))]
async fn model_metadata(
    state: web::Data<AppState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    let model = model_at(&state, &path)?;
    let signature = model.ready_signature()?;
    let sequence = model.spec.settings.sequence.as_ref();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "name": model.name(),
        "versions": [model.spec.version],
        "platform": "onnxruntime_onnx",
        "inputs": tensor_metadata(&signature.inputs, |name| {
            sequence.is_some_and(|seq| seq.fills_input(name))
        }),
        "outputs": tensor_metadata(&signature.outputs, |name| {
            sequence.is_some_and(|seq| seq.keeps_output(name))
        }),
    })))
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "v2", params(super::openapi::ModelParam),
    responses((status = 200, description = "The model is ready", body = super::openapi::ModelReady),
        (status = 503, description = "The model has no ready replica", body = super::openapi::ModelReady),
        super::openapi::ModelErrors))]
async fn model_ready(
    state: web::Data<AppState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    let model = model_at(&state, &path)?;
    let body = serde_json::json!({ "name": model.name(), "ready": model.is_ready() });
    Ok(if model.is_ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InferBody<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<InputBody<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputBody>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InputBody<'a> {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Borrowed: a lifted array's placeholder is found by where it lies.
    #[serde(default, borrow)]
    #[schema(value_type = Option<Vec<Value>>)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Decodes, predicts and answers; the request's record is finished with
/// the status actually sent, whatever step failed. The prediction's id in
/// the log comes back in `x-prediction-id` (the v2 body has no place for it).
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "v2",
    params(super::openapi::ModelParam, super::openapi::RequestHeaders, super::openapi::BinaryHeader),
    request_body(content((InferBody = "application/json"), (super::openapi::BinaryInferBody = "application/octet-stream"))),
    responses((status = 200, description = "The outputs", content((InferAnswer = "application/json"), (super::openapi::BinaryInferBody = "application/octet-stream"))),
        super::openapi::InferErrors))]
async fn infer(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<ModelPath>,
    payload: web::Payload,
    requested: Requested,
) -> HttpResponse {
    let mut pending = state.service.open(&requested);
    let answered = async {
        let model = model_at(&state, &path)?;
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
    pending.finish(answered)
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
    if inputs.is_empty() && outputs.is_empty() {
        return Ok(OutputRegions::default());
    }
    authorize(state, req)?;
    let regions = OutputRegions::resolve(&state.shared_memory, outputs)?;
    shm::read_inputs(&state.shared_memory, call, inputs)?;
    Ok(regions)
}

/// What the request still needs once its body is decoded: the inputs to
/// read from shared memory, and how to answer (its id, which outputs, how).
pub struct InferPlan {
    id: Option<String>,
    /// In answer order; `None` means all outputs.
    outputs: Option<Vec<RequestedOutput>>,
    binary_default: bool,
    /// Inputs whose bytes are in shared memory: not in the call yet.
    shared_inputs: Vec<SharedInput>,
}

/// An output the request asks for, and how it is sent.
struct RequestedOutput {
    name: String,
    binary: bool,
    /// Written into shared memory instead (`binary` then does not count).
    shared: Option<SharedRef>,
    /// Answered as its top classes (Triton's classification extension).
    classes: Option<usize>,
}

/// Parses an infer request body: its JSON header (the first
/// `header_length` bytes, from `Inference-Header-Content-Length`, else the
/// whole body) and the binary tensor data after it. Pure, for the handler
/// and the fuzz targets: inputs in shared memory are left in the plan, for
/// the handler to read.
pub fn decode(
    header_length: Option<&HeaderValue>,
    body: Bytes,
    request_id: String,
    header_timeout: Option<Duration>,
    header_priority: Option<Priority>,
) -> Result<(PredictCall, InferPlan), ApiError> {
    let (json, mut binary) = split_binary(header_length, &body)?;
    let lifted = LiftedBody::new(json);
    let parsed: InferBody = lifted.parse()?;
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    let mut shared_inputs = Vec::new();
    for input in parsed.inputs {
        let shared = shm::shared_ref(&input.parameters, "input", &input.name)?;
        let size = binary_size(&input.parameters, &input.name)?;
        let tensor = match (shared, size, &input.data) {
            (Some(at), None, None) => {
                shared_inputs.push(SharedInput {
                    position: inputs.len() + shared_inputs.len(),
                    dtype: parse_datatype(&input.name, &input.datatype)?,
                    name: input.name,
                    shape: input.shape,
                    at,
                });
                continue;
            }
            (Some(_), _, _) => {
                return Err(ApiError::BadRequest(format!(
                    "input '{}' names a shared memory region and also carries data",
                    input.name
                )))
            }
            (None, Some(size), _) => {
                if size > binary.len() {
                    return Err(ApiError::BadRequest(format!(
                        "input '{}' declares {size} binary bytes, only {} remain in the body",
                        input.name,
                        binary.len()
                    )));
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                let dtype = parse_datatype(&input.name, &input.datatype)?;
                let tensor = Tensor::new(dtype, input.shape, bytes.to_vec())
                    .map_err(|e| ApiError::InvalidTensor(format!("input '{}': {e}", input.name)))?;
                check_bools(&input.name, &tensor)?;
                tensor
            }
            (None, None, Some(data)) => {
                tensor_from_json(&input.name, &input.datatype, input.shape, lifted.data(data))
                    .map_err(|e| lifted.refused::<InferBody>(e))?
            }
            (None, None, None) => {
                return Err(ApiError::BadRequest(format!(
                    "input '{}' has neither 'data' nor a binary_data_size parameter",
                    input.name
                )))
            }
        };
        inputs.push((input.name, tensor));
    }
    if !binary.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            binary.len()
        )));
    }
    let timeout = match parsed.parameters.get("timeout") {
        None => header_timeout,
        Some(v) => Some(Duration::from_micros(
            v.as_u64().filter(|&us| us > 0).ok_or_else(|| {
                ApiError::BadRequest(
                    "parameters.timeout must be a positive integer (microseconds)".into(),
                )
            })?,
        )),
    };
    let priority = match parsed.parameters.get("priority") {
        None => header_priority.unwrap_or_default(),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "parameters.priority must be an integer from 1 (high) to 3 (low), not {v}"
                ))
            })
            .and_then(|level| {
                Priority::from_level(level)
                    .map_err(|e| ApiError::BadRequest(format!("parameters.{e}")))
            })?,
    };
    let binary_default = flag(&parsed.parameters, "binary_data_output")?;
    let outputs = match parsed.outputs {
        None => None,
        Some(list) => Some(
            list.into_iter()
                .map(|o| {
                    let binary = match o.parameters.get("binary_data") {
                        None => binary_default,
                        Some(_) => flag(&o.parameters, "binary_data")?,
                    };
                    let shared = shm::shared_ref(&o.parameters, "output", &o.name)?;
                    let classes = class_count(&o.parameters, &o.name)?;
                    if classes.is_some() && shared.is_some() {
                        return Err(ApiError::BadRequest(format!(
                            "output '{}': classification cannot be written to shared memory",
                            o.name
                        )));
                    }
                    Ok(RequestedOutput {
                        name: o.name,
                        binary,
                        shared,
                        classes,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?,
        ),
    };
    let call = PredictCall {
        request_id,
        inputs,
        timeout,
        use_cache: true,
        priority,
        sequence: SequenceCall::from_parameters(&parsed.parameters)
            .map_err(ApiError::BadRequest)?,
        pin: None,
    };
    Ok((
        call,
        InferPlan {
            id: parsed.id,
            outputs,
            binary_default,
            shared_inputs,
        },
    ))
}

/// Splits the body at `Inference-Header-Content-Length` into JSON and binary.
fn split_binary<'a>(
    header_length: Option<&HeaderValue>,
    body: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    let Some(value) = header_length else {
        return Ok((body, &[]));
    };
    let length = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n <= body.len())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{HEADER_LENGTH} must be an integer no larger than the body ({} bytes)",
                body.len()
            ))
        })?;
    Ok(body.split_at(length))
}

fn binary_size(parameters: &Map<String, Value>, input: &str) -> Result<Option<usize>, ApiError> {
    match parameters.get("binary_data_size") {
        None => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "input '{input}': binary_data_size must be an integer"
            ))
        }),
    }
}

fn flag(parameters: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match parameters.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::BadRequest(format!(
            "parameter '{key}' must be true or false"
        ))),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct OutputAnswer<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Always `None` when encoded: `answer_json` writes the array after
    /// the other members. Declared for the API's schema.
    #[schema(value_type = Option<Vec<Value>>)]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct InferAnswer<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputAnswer<'a>>,
}

/// `parameters.classification` of a requested output: a positive integer.
fn class_count(parameters: &Map<String, Value>, output: &str) -> Result<Option<usize>, ApiError> {
    match parameters.get("classification") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&k| k > 0)
            .map(|k| Some(k as usize))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "output '{output}': parameters.classification must be a positive integer, not {v}"
                ))
            }),
    }
}

/// The answer; outputs in shared memory are already written (the handler
/// wrote them), and are listed with the bytes written instead of data.
/// Outputs asked with `classification` are answered as their top classes.
fn encode(p: &Prediction, plan: InferPlan) -> Result<EncodedAnswer, ApiError> {
    let names: Option<Vec<String>> = plan
        .outputs
        .as_ref()
        .map(|o| o.iter().map(|o| o.name.clone()).collect());
    let selected = select_outputs(&p.outputs, names.as_deref())?;
    let classified: Vec<Option<Tensor>> = selected
        .iter()
        .enumerate()
        .map(|(index, (name, tensor))| {
            let k = plan.outputs.as_ref().and_then(|list| list[index].classes);
            k.map(|k| {
                top_classes(tensor, k, p.model.spec.labels.as_deref())
                    .map_err(|why| ApiError::InvalidTensor(format!("output '{name}': {why}")))
            })
            .transpose()
        })
        .collect::<Result<_, _>>()?;
    let selected: Vec<(&String, &Tensor)> = selected
        .into_iter()
        .zip(&classified)
        .map(|(output, classes)| (&output.0, classes.as_ref().unwrap_or(&output.1)))
        .collect();
    let mut binary_parts: Vec<&[u8]> = Vec::new();
    let mut outputs = Vec::with_capacity(selected.len());
    for (index, (name, tensor)) in selected.into_iter().enumerate() {
        let (as_binary, shared) = match &plan.outputs {
            Some(list) => (list[index].binary, list[index].shared.as_ref()),
            None => (plan.binary_default, None),
        };
        let (parameters, data) = if let Some(at) = shared {
            (Some(shm::answer_parameters(at, tensor.data.len())), None)
        } else if as_binary {
            binary_parts.push(&tensor.data);
            (
                Some(serde_json::json!({ "binary_data_size": tensor.data.len() })),
                None,
            )
        } else {
            (None, Some(tensor))
        };
        outputs.push((
            OutputAnswer {
                name,
                datatype: tensor.dtype.as_str(),
                shape: &tensor.shape,
                parameters,
                data: None,
            },
            data,
        ));
    }
    let answer = InferAnswer {
        model_name: p.model.name(),
        model_version: &p.model.spec.version,
        id: plan.id.as_deref(),
        outputs: Vec::new(),
    };
    let json = answer_json(&answer, &outputs).map_err(ApiError::Internal)?;
    if binary_parts.is_empty() {
        return Ok(EncodedAnswer {
            body: json,
            header_length: None,
        });
    }
    let header_length = json.len();
    let mut body = json;
    for part in binary_parts {
        body.extend_from_slice(part);
    }
    Ok(EncodedAnswer {
        body,
        header_length: Some(header_length),
    })
}

/// The answer's JSON: `answer` (its `outputs` empty) through serde, then
/// each output, its data array written by the codec straight into the
/// buffer ([`object_with_array`]) rather than through serde per element.
fn answer_json(
    answer: &InferAnswer,
    outputs: &[(OutputAnswer, Option<&Tensor>)],
) -> Result<Vec<u8>, String> {
    let mut json = serde_json::to_vec(answer).map_err(|e| e.to_string())?;
    // `outputs` is the answer's last member: `..."outputs":[]}`.
    if !json.ends_with(b"[]}") {
        return Err("the answer's outputs are not its last member".into());
    }
    json.truncate(json.len() - 2);
    for (index, (output, data)) in outputs.iter().enumerate() {
        if index > 0 {
            json.push(b',');
        }
        match data {
            Some(tensor) => object_with_array(&mut json, output, "data", tensor)?,
            None => serde_json::to_writer(&mut json, output).map_err(|e| e.to_string())?,
        }
    }
    json.extend_from_slice(b"]}");
    Ok(json)
}

/// An infer answer's body: JSON, or (with `header_length`) a JSON header
/// followed by binary tensor data.
pub struct EncodedAnswer {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
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
    Ok(match encoding {
        None => response.body(body),
        Some(encoding) => {
            let (compressed, name) = compress(body, encoding).await?;
            response
                .insert_header((header::CONTENT_ENCODING, name))
                .insert_header((header::VARY, "accept-encoding"))
                .body(compressed)
        }
    })
}
