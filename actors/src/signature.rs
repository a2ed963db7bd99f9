//! What a model takes and gives: input and output names, datatypes and shapes,
//! read from the engine's session, and the checks a request must pass before it
//! may join a batch.

use crate::error::InferError;
use crate::tensor::{DataType, Tensor};

/// One input or output of a model. A `None` dimension is dynamic.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<Option<usize>>,
    /// A request may leave this input out (Triton's `optional: true`, for
    /// an ONNX initializer a client may override): it then runs on the
    /// model's own value.
    pub optional: bool,
}

impl TensorSpec {
    /// Dimensions in KServe form: `-1` for a dynamic dimension.
    pub fn shape_i64(&self) -> Vec<i64> {
        self.dims
            .iter()
            .map(|d| d.map_or(-1, |v| v as i64))
            .collect()
    }

    fn first_dim_dynamic(&self) -> bool {
        matches!(self.dims.first(), Some(None))
    }

    /// A required input of `dtype` and `dims`.
    pub fn new(name: impl Into<String>, dtype: DataType, dims: Vec<Option<usize>>) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            dims,
            optional: false,
        }
    }
}

/// A model's inputs and outputs, in the session's order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The model's configuration says it takes no batch dimension
    /// (Triton's `max_batch_size: 0`), whatever its shapes: requests run
    /// alone, their tensors as they are.
    pub unbatched: bool,
}

/// A request's inputs after validation: ordered as the model declares them,
/// each with a leading batch dimension when the model is batched.
#[derive(Debug)]
pub struct ValidatedInputs {
    pub tensors: Vec<Tensor>,
    /// Items this request adds to a batch (its batch dimension, 1 if unbatched).
    pub items: usize,
    /// The caller sent single items without a batch dimension; outputs are
    /// returned without it too.
    pub batch_dim_added: bool,
}

impl ModelSignature {
    /// A model is batched when every input has a dynamic leading dimension;
    /// a model where any input lacks one is served one request at a time.
    pub fn is_batched(&self) -> bool {
        !self.unbatched
            && !self.inputs.is_empty()
            && self.inputs.iter().all(TensorSpec::first_dim_dynamic)
    }

    /// Position of the output called `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }

    /// Checks names, datatypes and shapes of named inputs and puts them in the
    /// model's order. Errors are 422-class and name the offending input.
    pub fn validate(
        &self,
        named: Vec<(String, Tensor)>,
        max_batch_size: usize,
    ) -> Result<ValidatedInputs, InferError> {
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for (name, tensor) in named {
            let Some(index) = self.inputs.iter().position(|s| s.name == name) else {
                return Err(InferError::InvalidInput(format!(
                    "unknown input '{name}'; the model expects {}",
                    self.input_names()
                )));
            };
            if slots[index].replace(tensor).is_some() {
                return Err(InferError::InvalidInput(format!(
                    "input '{name}' is given more than once"
                )));
            }
        }
        let batched = self.is_batched();
        let mut tensors = Vec::with_capacity(slots.len());
        let mut items: Option<usize> = None;
        let mut added: Option<bool> = None;
        for (spec, slot) in self.inputs.iter().zip(slots) {
            let Some(mut tensor) = slot else {
                if spec.optional {
                    tensors.push(Tensor::absent(spec.dtype));
                    continue;
                }
                return Err(InferError::InvalidInput(format!(
                    "missing input '{}'; the model expects {}",
                    spec.name,
                    self.input_names()
                )));
            };
            if tensor.dtype != spec.dtype {
                return Err(InferError::InvalidInput(format!(
                    "input '{}' has datatype {}, the model expects {}",
                    spec.name, tensor.dtype, spec.dtype
                )));
            }
            let this_added = batched && tensor.shape.len() + 1 == spec.dims.len();
            if this_added {
                tensor.shape.insert(0, 1);
            }
            check_shape(spec, &tensor.shape)?;
            if *added.get_or_insert(this_added) != this_added {
                return Err(InferError::InvalidInput(
                    "either every input carries the batch dimension or none does".into(),
                ));
            }
            if batched {
                let n = tensor.shape[0];
                if *items.get_or_insert(n) != n {
                    return Err(InferError::InvalidInput(format!(
                        "input '{}' has batch size {n}, other inputs have {}",
                        spec.name,
                        items.unwrap_or_default()
                    )));
                }
            }
            tensors.push(tensor);
        }
        if batched && items.is_none() {
            return Err(InferError::InvalidInput(format!(
                "no input given; the model expects {}",
                self.input_names()
            )));
        }
        let items = items.unwrap_or(1);
        if batched && items == 0 {
            return Err(InferError::InvalidInput(
                "batch dimension is 0: send at least one item".into(),
            ));
        }
        if batched && items > max_batch_size {
            return Err(InferError::InvalidInput(format!(
                "request holds {items} items, more than the model's max_batch_size {max_batch_size}"
            )));
        }
        Ok(ValidatedInputs {
            tensors,
            items,
            batch_dim_added: added.unwrap_or(false),
        })
    }

    /// Items a request of `named` inputs (already validated once) holds:
    /// its batch dimension, 1 for single items and unbatched models.
    pub fn items_of(&self, named: &[(String, Tensor)]) -> usize {
        if !self.is_batched() {
            return 1;
        }
        // The first input the request gives (optional ones may be left out).
        self.inputs
            .iter()
            .find_map(|spec| {
                let (_, t) = named.iter().find(|(name, _)| *name == spec.name)?;
                Some((spec, t))
            })
            .filter(|(spec, t)| t.shape.len() == spec.dims.len())
            .and_then(|(_, t)| t.shape.first().copied())
            .unwrap_or(1)
    }

    fn input_names(&self) -> String {
        let names: Vec<String> = self
            .inputs
            .iter()
            .map(|s| {
                if s.optional {
                    format!("'{}' (optional)", s.name)
                } else {
                    format!("'{}'", s.name)
                }
            })
            .collect();
        format!("[{}]", names.join(", "))
    }
}

fn check_shape(spec: &TensorSpec, shape: &[usize]) -> Result<(), InferError> {
    let fits = shape.len() == spec.dims.len()
        && spec
            .dims
            .iter()
            .zip(shape)
            .all(|(want, got)| want.is_none_or(|w| w == *got));
    if fits {
        Ok(())
    } else {
        Err(InferError::InvalidInput(format!(
            "input '{}' has shape {:?}, the model expects {:?} (-1 is any size)",
            spec.name,
            shape,
            spec.shape_i64()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dims: Vec<Option<usize>>) -> TensorSpec {
        TensorSpec::new(name, DataType::Fp32, dims)
    }

    fn sig() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                spec("a", vec![None, Some(2)]),
                spec("b", vec![None, Some(1)]),
            ],
            outputs: vec![spec("y", vec![None, Some(2)])],
            unbatched: false,
        }
    }

    fn f32(shape: Vec<usize>) -> Tensor {
        Tensor::zeros(DataType::Fp32, shape)
    }

    #[test]
    fn orders_inputs_and_counts_items() {
        let v = sig()
            .validate(
                vec![("b".into(), f32(vec![3, 1])), ("a".into(), f32(vec![3, 2]))],
                8,
            )
            .unwrap();
        assert_eq!(v.items, 3);
        assert_eq!(v.tensors[0].shape, vec![3, 2]);
        assert!(!v.batch_dim_added);
    }

    #[test]
    fn adds_missing_batch_dimension() {
        let v = sig()
            .validate(
                vec![("a".into(), f32(vec![2])), ("b".into(), f32(vec![1]))],
                8,
            )
            .unwrap();
        assert!(v.batch_dim_added);
        assert_eq!(v.tensors[0].shape, vec![1, 2]);
    }

    #[test]
    fn rejects_bad_requests_with_named_input() {
        let s = sig();
        let cases = vec![
            (vec![("c".into(), f32(vec![1, 2]))], "unknown input 'c'"),
            (vec![("a".into(), f32(vec![1, 2]))], "missing input 'b'"),
            (
                vec![("a".into(), f32(vec![1, 3])), ("b".into(), f32(vec![1, 1]))],
                "input 'a' has shape",
            ),
            (
                vec![("a".into(), f32(vec![2, 2])), ("b".into(), f32(vec![1, 1]))],
                "batch size 1",
            ),
            (
                vec![
                    ("a".into(), Tensor::zeros(DataType::Fp64, vec![1, 2])),
                    ("b".into(), f32(vec![1, 1])),
                ],
                "datatype FP64",
            ),
            (
                vec![("a".into(), f32(vec![9, 2])), ("b".into(), f32(vec![9, 1]))],
                "max_batch_size 8",
            ),
        ];
        for (inputs, needle) in cases {
            let err = s.validate(inputs, 8).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn fixed_first_dimension_means_unbatched() {
        let s = ModelSignature {
            inputs: vec![spec("x", vec![Some(1), Some(4)])],
            outputs: vec![spec("y", vec![Some(1), Some(4)])],
            unbatched: false,
        };
        assert!(!s.is_batched());
        let v = s.validate(vec![("x".into(), f32(vec![1, 4]))], 8).unwrap();
        assert_eq!(v.items, 1);
        assert!(s.validate(vec![("x".into(), f32(vec![4]))], 8).is_err());
    }

    #[test]
    fn an_optional_input_may_be_left_out() {
        let mut s = sig();
        s.inputs[1].optional = true;
        let v = s.validate(vec![("a".into(), f32(vec![3, 2]))], 8).unwrap();
        assert_eq!(v.items, 3);
        assert!(v.tensors[1].is_absent());
        assert_eq!(v.tensors[1].dtype, DataType::Fp32);
        assert_eq!(s.items_of(&[("b".into(), f32(vec![2, 1]))]), 2);
        // Given, it is checked as any other.
        let err = s
            .validate(
                vec![("a".into(), f32(vec![3, 2])), ("b".into(), f32(vec![2, 1]))],
                8,
            )
            .unwrap_err();
        assert!(err.to_string().contains("batch size 2"), "{err}");
        // A required one still may not.
        s.inputs[1].optional = false;
        s.inputs[0].optional = true;
        let err = s
            .validate(vec![("a".into(), f32(vec![3, 2]))], 8)
            .unwrap_err();
        assert!(err.to_string().contains("missing input 'b'"), "{err}");
        // Nothing at all is not a request.
        s.inputs[1].optional = true;
        let err = s.validate(vec![], 8).unwrap_err();
        assert!(err.to_string().contains("no input given"), "{err}");
        assert!(err.to_string().contains("'a' (optional)"), "{err}");
    }
}
