//! Encoding a v2 infer answer: JSON with each output's data array written
//! by the codec, or a JSON header followed by binary tensor data; outputs
//! in shared memory listed with the bytes written, outputs asked with
//! `classification` answered as their top classes.

use gantry_actors::Tensor;
use serde::Serialize;
use serde_json::Value;

use super::decode::InferPlan;
use crate::codec::{object_with_array, JsonData};
use crate::error::ApiError;
use crate::service::predict::select_outputs;
use crate::service::shared_tensors as shm;
use crate::service::Prediction;
use crate::triton::classification::top_classes;

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct OutputAnswer<'a> {
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
pub(super) struct InferAnswer<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputAnswer<'a>>,
}

/// The answer; outputs in shared memory are already written (the handler
/// wrote them), and are listed with the bytes written instead of data.
/// Outputs asked with `classification` are answered as their top classes.
pub(super) fn encode(p: &Prediction, plan: InferPlan) -> Result<EncodedAnswer, ApiError> {
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
