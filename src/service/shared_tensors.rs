//! Tensors in shared memory, whatever the protocol: the
//! `shared_memory_region`, `shared_memory_byte_size` and
//! `shared_memory_offset` parameters of an input (its bytes are read from
//! the region) or a requested output (its bytes are written there, and the
//! answer says how many instead of carrying them). Naming a region is an
//! admin matter, as registering one is ([`InferenceService::resolve_shared`]).

use std::sync::Arc;

use gantry_actors::{DataType, Tensor};
use serde_json::{json, Map, Value};

use super::admin::Caller;
use super::predict::select_outputs;
use super::{InferenceService, PredictCall};
use crate::codec::check_bools;
use crate::error::ApiError;
use crate::triton::shared_memory::{Region, SharedMemoryRegistry};

impl InferenceService {
    /// When a request names shared memory regions: checks `caller` may
    /// (an admin matter, as registering them is), reads its inputs that
    /// are there into `call`, and finds the regions its outputs (name and
    /// place) go to, before anything runs.
    pub fn resolve_shared(
        &self,
        caller: &Caller,
        call: &mut PredictCall,
        inputs: Vec<SharedInput>,
        outputs: Vec<(&str, &SharedRef)>,
    ) -> Result<OutputRegions, ApiError> {
        if inputs.is_empty() && outputs.is_empty() {
            return Ok(OutputRegions::default());
        }
        self.authorize(caller)?;
        let regions = OutputRegions::resolve(&self.shared_memory, outputs)?;
        read_inputs(&self.shared_memory, call, inputs)?;
        Ok(regions)
    }
}

/// Where a tensor's bytes are in shared memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRef {
    pub region: String,
    /// The input's size, or the room for the output, in bytes.
    pub byte_size: usize,
    /// From the region's start.
    pub offset: usize,
}

const REGION: &str = "shared_memory_region";
const BYTE_SIZE: &str = "shared_memory_byte_size";
const OFFSET: &str = "shared_memory_offset";

/// The shared memory the `parameters` of a tensor (`kind` `name`: "input
/// 'x'") name, if any; 400 when they are incomplete or not of their types.
pub fn shared_ref(
    parameters: &Map<String, Value>,
    kind: &str,
    name: &str,
) -> Result<Option<SharedRef>, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("{kind} '{name}': {why}"));
    let size = |key: &str| -> Result<Option<usize>, ApiError> {
        match parameters.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("{key} must be a non-negative integer, not {v}"))),
        }
    };
    let byte_size = size(BYTE_SIZE)?;
    let offset = size(OFFSET)?;
    let region = match parameters.get(REGION) {
        None if byte_size.is_none() && offset.is_none() => return Ok(None),
        None => return Err(bad(format!("{BYTE_SIZE} and {OFFSET} need {REGION}"))),
        Some(Value::String(name)) => name.clone(),
        Some(v) => return Err(bad(format!("{REGION} must be a region's name, not {v}"))),
    };
    let byte_size = byte_size.ok_or_else(|| bad(format!("{REGION} needs {BYTE_SIZE}")))?;
    Ok(Some(SharedRef {
        region,
        byte_size,
        offset: offset.unwrap_or(0),
    }))
}

/// An input whose bytes are in shared memory, read once the request is
/// authorized: it goes at `position` among the call's inputs.
#[derive(Debug)]
pub struct SharedInput {
    pub position: usize,
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub at: SharedRef,
}

/// Copies each input out of its region into `call`, in request order:
/// 400 for an unknown region, 422 when the window leaves the region or its
/// bytes do not make the input's shape.
pub fn read_inputs(
    registry: &SharedMemoryRegistry,
    call: &mut PredictCall,
    inputs: Vec<SharedInput>,
) -> Result<(), ApiError> {
    for input in inputs {
        let what = format!("input '{}'", input.name);
        let region = registry.region(&input.at.region)?;
        let bytes = region.read(input.at.offset, input.at.byte_size, &what)?;
        let tensor = Tensor::new(input.dtype, input.shape, bytes)
            .map_err(|e| ApiError::InvalidTensor(format!("{what}: {e}")))?;
        check_bools(&input.name, &tensor)?;
        let position = input.position.min(call.inputs.len());
        call.inputs.insert(position, (input.name, tensor));
    }
    Ok(())
}

/// The regions outputs go to, each checked to hold its window.
#[derive(Default)]
pub struct OutputRegions(Vec<(String, Arc<Region>, SharedRef)>);

impl OutputRegions {
    /// Finds the region of each `(output, where)`, before the prediction
    /// runs: 400 for an unknown region, 422 for a window that leaves it.
    pub fn resolve<'a>(
        registry: &SharedMemoryRegistry,
        outputs: impl IntoIterator<Item = (&'a str, &'a SharedRef)>,
    ) -> Result<OutputRegions, ApiError> {
        outputs
            .into_iter()
            .map(|(name, at)| {
                let region = registry.region(&at.region)?;
                region.check(at.offset, at.byte_size, &format!("output '{name}'"))?;
                Ok((name.to_string(), region, at.clone()))
            })
            .collect::<Result<_, ApiError>>()
            .map(OutputRegions)
    }

    /// Writes each output into its region once every one is known to fit
    /// (422, and nothing written, when one does not).
    pub fn write(&self, outputs: &[(String, Tensor)]) -> Result<(), ApiError> {
        let names: Vec<String> = self.0.iter().map(|(name, _, _)| name.clone()).collect();
        let tensors = select_outputs(outputs, Some(&names))?;
        for ((name, region, at), (_, tensor)) in self.0.iter().zip(&tensors) {
            let needed = tensor.data.len();
            if needed > at.byte_size {
                return Err(ApiError::InvalidTensor(format!(
                    "output '{name}': {BYTE_SIZE} is {} bytes, too small for its {needed} bytes \
                     (shared memory region '{}')",
                    at.byte_size, at.region
                )));
            }
            region.check(at.offset, needed, &format!("output '{name}'"))?;
        }
        for ((name, region, at), (_, tensor)) in self.0.iter().zip(&tensors) {
            region.write(at.offset, &tensor.data, &format!("output '{name}'"))?;
        }
        Ok(())
    }
}

/// The `parameters` of an output answered in shared memory: the region and
/// the bytes written there (and the offset, when not 0).
pub fn answer_parameters(at: &SharedRef, written: usize) -> Value {
    let mut parameters = json!({ REGION: at.region, BYTE_SIZE: written });
    if at.offset != 0 {
        parameters[OFFSET] = json!(at.offset);
    }
    parameters
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn parameters_name_a_region_completely_or_not_at_all() {
        assert_eq!(
            shared_ref(&params(json!({"binary_data_size": 8})), "input", "x").unwrap(),
            None
        );
        let at = shared_ref(
            &params(json!({REGION: "in", BYTE_SIZE: 24, OFFSET: 8})),
            "input",
            "x",
        )
        .unwrap();
        assert_eq!(
            at,
            Some(SharedRef {
                region: "in".into(),
                byte_size: 24,
                offset: 8
            })
        );
        let at = shared_ref(&params(json!({REGION: "in", BYTE_SIZE: 24})), "input", "x").unwrap();
        assert_eq!(at.unwrap().offset, 0);
        for wrong in [
            json!({REGION: "in"}),
            json!({BYTE_SIZE: 24}),
            json!({OFFSET: 0}),
            json!({REGION: 3, BYTE_SIZE: 24}),
            json!({REGION: "in", BYTE_SIZE: -1}),
            json!({REGION: "in", BYTE_SIZE: 2.5}),
            json!({REGION: "in", BYTE_SIZE: 24, OFFSET: "8"}),
        ] {
            let e = shared_ref(&params(wrong.clone()), "input", "x").unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{wrong}: {e:?}");
        }
    }

    #[test]
    fn answers_name_the_region_and_the_bytes_written() {
        let at = SharedRef {
            region: "out".into(),
            byte_size: 64,
            offset: 0,
        };
        assert_eq!(
            answer_parameters(&at, 24),
            json!({REGION: "out", BYTE_SIZE: 24})
        );
        let at = SharedRef { offset: 8, ..at };
        assert_eq!(
            answer_parameters(&at, 24),
            json!({REGION: "out", BYTE_SIZE: 24, OFFSET: 8})
        );
    }
}
