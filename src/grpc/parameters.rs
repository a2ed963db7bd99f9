//! Triton's parameter maps (`map<string, InferParameter>` on requests,
//! tensors and answers; `ModelRepositoryParameter` on loads) as the JSON
//! objects HTTP requests carry, and back: so both protocols read request
//! options, shared memory references and load overrides with the same
//! code ([`crate::service::predict::call_parameters`], [`crate::service::shared_tensors`],
//! [`crate::service::models::overrides_from_parameters`]).
//!
//! The two protobuf oneofs differ (uint64 and double on inference, bytes
//! on loads), so each has its own small converter.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::proto::{infer_parameter, model_repository_parameter};
use super::proto::{InferParameter, ModelRepositoryParameter};

/// Inference parameters as JSON values.
pub fn json_parameters(parameters: HashMap<String, InferParameter>) -> Map<String, Value> {
    use infer_parameter::ParameterChoice;
    parameters
        .into_iter()
        .map(|(key, p)| {
            let value = match p.parameter_choice {
                None => Value::Null,
                Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
                Some(ParameterChoice::Int64Param(i)) => Value::from(i),
                Some(ParameterChoice::Uint64Param(u)) => Value::from(u),
                Some(ParameterChoice::DoubleParam(d)) => Value::from(d),
                Some(ParameterChoice::StringParam(s)) => Value::String(s),
            };
            (key, value)
        })
        .collect()
}

/// JSON answer parameters (an object) as inference parameters: integers
/// as int64 (what Triton answers `shared_memory_byte_size` in), others by
/// their kind; members that are neither a scalar nor in range are left out.
pub fn proto_parameters(parameters: &Value) -> HashMap<String, InferParameter> {
    use infer_parameter::ParameterChoice;
    let Some(object) = parameters.as_object() else {
        return HashMap::new();
    };
    object
        .iter()
        .filter_map(|(key, value)| {
            let choice = match value {
                Value::Bool(b) => ParameterChoice::BoolParam(*b),
                Value::String(s) => ParameterChoice::StringParam(s.clone()),
                Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => ParameterChoice::Int64Param(i),
                    (None, Some(u), _) => ParameterChoice::Uint64Param(u),
                    (None, None, Some(d)) => ParameterChoice::DoubleParam(d),
                    _ => return None,
                },
                Value::Null | Value::Array(_) | Value::Object(_) => return None,
            };
            let parameter = InferParameter {
                parameter_choice: Some(choice),
            };
            Some((key.clone(), parameter))
        })
        .collect()
}

/// A load's parameters as the JSON HTTP's load body holds (`config` is a
/// JSON text; `file:` keys are refused there as here, so their bytes are
/// only described).
pub fn load_parameters(
    parameters: HashMap<String, ModelRepositoryParameter>,
) -> Map<String, Value> {
    use model_repository_parameter::ParameterChoice;
    parameters
        .into_iter()
        .map(|(key, p)| {
            let value = match p.parameter_choice {
                None => Value::Null,
                Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
                Some(ParameterChoice::Int64Param(i)) => Value::from(i),
                Some(ParameterChoice::StringParam(s)) => Value::String(s),
                Some(ParameterChoice::BytesParam(b)) => Value::String(format!("{} bytes", b.len())),
            };
            (key, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use infer_parameter::ParameterChoice;
    use serde_json::json;

    fn p(choice: ParameterChoice) -> InferParameter {
        InferParameter {
            parameter_choice: Some(choice),
        }
    }

    #[test]
    fn parameters_go_to_json_and_back_by_kind() {
        let sent = HashMap::from([
            (
                "region".to_string(),
                p(ParameterChoice::StringParam("r".into())),
            ),
            ("size".to_string(), p(ParameterChoice::Int64Param(24))),
            ("big".to_string(), p(ParameterChoice::Uint64Param(u64::MAX))),
            ("ratio".to_string(), p(ParameterChoice::DoubleParam(0.5))),
            ("flag".to_string(), p(ParameterChoice::BoolParam(true))),
        ]);
        let as_json = Value::Object(json_parameters(sent.clone()));
        assert_eq!(
            as_json,
            json!({"region": "r", "size": 24, "big": u64::MAX, "ratio": 0.5, "flag": true})
        );
        assert_eq!(proto_parameters(&as_json), sent);
        let skipped = proto_parameters(&json!({"list": [1], "none": null, "n": 3}));
        assert_eq!(
            skipped,
            HashMap::from([("n".to_string(), p(ParameterChoice::Int64Param(3)))])
        );
        assert!(proto_parameters(&json!([1, 2])).is_empty());
    }
}
