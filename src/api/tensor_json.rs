//! Tensors as an answer's JSON (`shape`, `datatype`, `data` written by the
//! codec), and the rounding of answer timings; shared by the JSON and the
//! upload answers of `/api/optimized/predict`.

use std::collections::BTreeMap;

use gantry_actors::Tensor;
use serde::Serialize;

use crate::codec::JsonData;

#[derive(Serialize, utoipa::ToSchema)]
pub struct JsonTensorOut<'a> {
    shape: &'a [usize],
    datatype: &'static str,
    #[schema(value_type = Vec<Value>)]
    data: JsonData<'a>,
}

/// Outputs as JSON tensors, by name.
pub fn json_outputs<'a>(
    outputs: impl Iterator<Item = &'a (String, Tensor)>,
) -> BTreeMap<&'a str, JsonTensorOut<'a>> {
    outputs
        .map(|(name, t)| {
            (
                name.as_str(),
                JsonTensorOut {
                    shape: &t.shape,
                    datatype: t.dtype.as_str(),
                    data: JsonData(t),
                },
            )
        })
        .collect()
}

/// Milliseconds to three decimals (microseconds), as answers carry them.
pub fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}
