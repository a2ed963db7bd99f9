//! Decoding a v2 infer request: the JSON header (inputs as JSON tensors,
//! their `data` arrays lifted out and read by the codec), the binary tensor
//! data after it (`Inference-Header-Content-Length`), inputs and outputs in
//! shared memory, and the outputs asked for and how ([`InferPlan`]).

use std::time::Duration;

use actix_web::http::header::HeaderValue;
use bytes::Bytes;
use gantry_actors::{Priority, Tensor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::HEADER_LENGTH;
use crate::codec::{check_bools, parse_datatype, tensor_from_json, LiftedBody};
use crate::error::ApiError;
use crate::service::predict::call_parameters;
use crate::service::shared_tensors::{self as shm, SharedInput, SharedRef};
use crate::service::PredictCall;
use crate::triton::classification::class_count;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct InferBody<'a> {
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
pub(super) struct InputBody<'a> {
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
pub(super) struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// What the request still needs once its body is decoded: the inputs to
/// read from shared memory, and how to answer (its id, which outputs, how).
pub struct InferPlan {
    pub(super) id: Option<String>,
    /// In answer order; `None` means all outputs.
    pub(super) outputs: Option<Vec<RequestedOutput>>,
    pub(super) binary_default: bool,
    /// Inputs whose bytes are in shared memory: not in the call yet.
    pub(super) shared_inputs: Vec<SharedInput>,
}

/// An output the request asks for, and how it is sent.
pub(super) struct RequestedOutput {
    pub(super) name: String,
    pub(super) binary: bool,
    /// Written into shared memory instead (`binary` then does not count).
    pub(super) shared: Option<SharedRef>,
    /// Answered as its top classes (Triton's classification extension).
    pub(super) classes: Option<usize>,
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
    let (timeout, priority, sequence) =
        call_parameters(&parsed.parameters, header_timeout, header_priority)?;
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
        sequence,
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
