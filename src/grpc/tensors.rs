//! Tensors between Triton's gRPC messages and Gantry's: a request's inputs
//! from `raw_input_contents` (little-endian bytes, BYTES elements each
//! after its 4-byte length, as the HTTP binary extension has them) or from
//! the typed `contents` lists, and the answer's outputs as
//! `raw_output_contents`, which is what Triton sends and what
//! `tritonclient.grpc` reads. Inputs and outputs may instead name a system
//! shared memory region in their parameters (as over HTTP: the same
//! [`crate::service::shared_tensors`] code reads and writes the regions).

use gantry_actors::tensor::DataType;
use gantry_actors::Tensor;

use super::parameters::{json_parameters, proto_parameters};
use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::InferTensorContents;
use crate::codec::{check_bools, parse_datatype};
use crate::error::ApiError;
use crate::service::shared_tensors::{self as shm, SharedInput, SharedRef};

/// A request's inputs: those the message carries, in order, and those in
/// shared memory, read into the call once it is authorized.
#[derive(Debug, Default)]
pub struct RequestInputs {
    pub carried: Vec<(String, Tensor)>,
    pub shared: Vec<SharedInput>,
}

/// The request's inputs: each from its raw bytes when the request sends
/// `raw_input_contents` (one entry an input not in shared memory, in
/// order, as Triton counts them), else from its typed contents, or from
/// the shared memory region its parameters name.
pub fn inputs(
    mut inputs: Vec<InferInputTensor>,
    raw: Vec<Vec<u8>>,
) -> Result<RequestInputs, ApiError> {
    let places = inputs
        .iter_mut()
        .map(|input| {
            let parameters = json_parameters(std::mem::take(&mut input.parameters));
            shm::shared_ref(&parameters, "input", &input.name)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let carried = places.iter().filter(|at| at.is_none()).count();
    if !raw.is_empty() && raw.len() != carried {
        return Err(ApiError::BadRequest(format!(
            "the request has {carried} inputs not in shared memory and {} raw_input_contents; send \
             one raw entry per such input, or none",
            raw.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut out = RequestInputs::default();
    for (input, at) in inputs.into_iter().zip(places) {
        let dtype = parse_datatype(&input.name, &input.datatype)?;
        let shape = shape(&input.name, &input.shape)?;
        if let Some(at) = at {
            if input.contents.is_some() {
                return Err(ApiError::BadRequest(format!(
                    "input '{}' names a shared memory region and also carries contents",
                    input.name
                )));
            }
            out.shared.push(SharedInput {
                position: out.carried.len() + out.shared.len(),
                name: input.name,
                dtype,
                shape,
                at,
            });
            continue;
        }
        let data = match raw.next() {
            Some(bytes) => {
                if input.contents.is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "input '{}' has both contents and raw_input_contents",
                        input.name
                    )));
                }
                bytes
            }
            None => typed(&input.name, dtype, input.contents.unwrap_or_default())?,
        };
        let tensor = Tensor::new(dtype, shape, data)
            .map_err(|e| ApiError::InvalidTensor(format!("input '{}': {e}", input.name)))?;
        check_bools(&input.name, &tensor)?;
        out.carried.push((input.name, tensor));
    }
    Ok(out)
}

/// A shape of non-negative dimensions.
fn shape(name: &str, dims: &[i64]) -> Result<Vec<usize>, ApiError> {
    dims.iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                ApiError::InvalidTensor(format!(
                    "input '{name}': shape {dims:?} has a negative dimension"
                ))
            })
        })
        .collect()
}

/// An input's bytes from the typed list its datatype uses: `int_contents`
/// for INT8-INT32 (each value in the datatype's range), `uint_contents` for
/// UINT8-UINT32, and so on. FP16 and BF16 have no list: raw only.
fn typed(name: &str, dtype: DataType, c: InferTensorContents) -> Result<Vec<u8>, ApiError> {
    fn narrow<T: TryFrom<W> + Copy, W: Copy + std::fmt::Display, const N: usize>(
        name: &str,
        dtype: DataType,
        values: &[W],
        bytes: impl Fn(T) -> [u8; N],
    ) -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::with_capacity(values.len() * N);
        for (index, &v) in values.iter().enumerate() {
            let narrowed = T::try_from(v).map_err(|_| {
                ApiError::InvalidTensor(format!(
                    "input '{name}': the value {v} at index {index} is out of range for {dtype}"
                ))
            })?;
            out.extend_from_slice(&bytes(narrowed));
        }
        Ok(out)
    }
    fn flat<T: Copy, const N: usize>(values: &[T], bytes: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| bytes(v)).collect()
    }
    Ok(match dtype {
        DataType::Bool => c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        DataType::Int8 => narrow(name, dtype, &c.int_contents, i8::to_le_bytes)?,
        DataType::Int16 => narrow(name, dtype, &c.int_contents, i16::to_le_bytes)?,
        DataType::Int32 => flat(&c.int_contents, i32::to_le_bytes),
        DataType::Int64 => flat(&c.int64_contents, i64::to_le_bytes),
        DataType::Uint8 => narrow(name, dtype, &c.uint_contents, u8::to_le_bytes)?,
        DataType::Uint16 => narrow(name, dtype, &c.uint_contents, u16::to_le_bytes)?,
        DataType::Uint32 => flat(&c.uint_contents, u32::to_le_bytes),
        DataType::Uint64 => flat(&c.uint64_contents, u64::to_le_bytes),
        DataType::Fp32 => flat(&c.fp32_contents, f32::to_le_bytes),
        DataType::Fp64 => flat(&c.fp64_contents, f64::to_le_bytes),
        DataType::Bytes => {
            let mut out = Vec::new();
            for element in &c.bytes_contents {
                let length = u32::try_from(element.len()).map_err(|_| {
                    ApiError::InvalidTensor(format!("input '{name}': a BYTES element exceeds 4 GiB"))
                })?;
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(element);
            }
            out
        }
        DataType::Fp16 | DataType::Bf16 => {
            return Err(ApiError::InvalidTensor(format!(
                "input '{name}': {dtype} has no typed contents in the protocol; send it in raw_input_contents"
            )))
        }
    })
}

/// The answer's outputs and their `raw_output_contents`. An output
/// written to shared memory (`shared` says where) answers the region and
/// the bytes written in its parameters, and has an empty raw entry so the
/// entries stay aligned with the outputs (the client finds an output's
/// bytes by its position); when every output is in shared memory there
/// are no raw entries at all.
pub fn outputs<'a>(
    selected: &[&(String, Tensor)],
    shared: impl Fn(&str) -> Option<&'a SharedRef>,
) -> (Vec<InferOutputTensor>, Vec<Vec<u8>>) {
    let mut all_shared = true;
    let (described, raw) = selected
        .iter()
        .map(|(name, tensor)| {
            let (parameters, bytes) = match shared(name) {
                Some(at) => (
                    proto_parameters(&shm::answer_parameters(at, tensor.data.len())),
                    Vec::new(),
                ),
                None => {
                    all_shared = false;
                    (Default::default(), tensor.data.clone())
                }
            };
            let described = InferOutputTensor {
                name: name.clone(),
                datatype: tensor.dtype.as_str().to_string(),
                shape: tensor.shape.iter().map(|&d| d as i64).collect(),
                parameters,
                contents: None,
            };
            (described, bytes)
        })
        .unzip();
    (described, if all_shared { Vec::new() } else { raw })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        shape: &[i64],
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn raw_and_typed_contents_give_the_same_tensor() {
        let values = [1.5f32, -2.0, 0.25, 8.0];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let from_raw = inputs(vec![input("x", "FP32", &[2, 2], None)], vec![raw]).unwrap();
        let typed = InferTensorContents {
            fp32_contents: values.to_vec(),
            ..Default::default()
        };
        let from_typed = inputs(vec![input("x", "FP32", &[2, 2], Some(typed))], vec![]).unwrap();
        assert_eq!(from_raw.carried, from_typed.carried);
        assert_eq!(from_raw.carried[0].1.shape, vec![2, 2]);
    }

    #[test]
    fn narrow_types_are_range_checked_and_bytes_length_prefixed() {
        let small = InferTensorContents {
            int_contents: vec![1, -128, 300],
            ..Default::default()
        };
        let e = inputs(vec![input("i", "INT8", &[3], Some(small))], vec![]).unwrap_err();
        assert!(
            e.to_string()
                .contains("300 at index 2 is out of range for INT8"),
            "{e}"
        );
        let words = InferTensorContents {
            bytes_contents: vec![b"ab".to_vec(), b"".to_vec()],
            ..Default::default()
        };
        let t = inputs(vec![input("s", "BYTES", &[2], Some(words))], vec![]).unwrap();
        assert_eq!(
            t.carried[0].1.bytes_elements().unwrap(),
            vec![&b"ab"[..], &b""[..]]
        );
    }

    #[test]
    fn what_does_not_fit_is_refused_with_its_reason() {
        let e = inputs(vec![input("x", "FP32", &[-1, 4], None)], vec![vec![0; 16]]).unwrap_err();
        assert!(e.to_string().contains("negative dimension"), "{e}");
        let e = inputs(vec![input("x", "FP32", &[2], None)], vec![vec![0; 4]]).unwrap_err();
        assert!(matches!(e, ApiError::InvalidTensor(_)), "{e}");
        let e = inputs(
            vec![
                input("x", "FP32", &[1], None),
                input("y", "FP32", &[1], None),
            ],
            vec![vec![0; 4]],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("one raw entry per such input"),
            "{e}"
        );
        let e = inputs(
            vec![input("h", "FP16", &[1], Some(Default::default()))],
            vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("raw_input_contents"), "{e}");
        let e = inputs(vec![input("b", "BOOL", &[1], None)], vec![vec![2]]).unwrap_err();
        assert!(e.to_string().contains("not a value of BOOL"), "{e}");
    }

    fn in_region(name: &str, region: &str, size: i64) -> InferInputTensor {
        use super::super::proto::{infer_parameter::ParameterChoice, InferParameter};
        let mut tensor = input(name, "FP32", &[1], None);
        let p = |c| InferParameter {
            parameter_choice: Some(c),
        };
        tensor.parameters = [
            (
                "shared_memory_region".to_string(),
                p(ParameterChoice::StringParam(region.into())),
            ),
            (
                "shared_memory_byte_size".to_string(),
                p(ParameterChoice::Int64Param(size)),
            ),
        ]
        .into();
        tensor
    }

    #[test]
    fn raw_entries_count_only_the_inputs_not_in_shared_memory() {
        let got = inputs(
            vec![
                in_region("a", "r", 4),
                input("b", "FP32", &[1], None),
                in_region("c", "r", 4),
            ],
            vec![1f32.to_le_bytes().to_vec()],
        )
        .unwrap();
        assert_eq!(got.carried.len(), 1);
        assert_eq!(got.carried[0].0, "b");
        let placed: Vec<_> = got
            .shared
            .iter()
            .map(|s| (s.name.as_str(), s.position))
            .collect();
        assert_eq!(placed, vec![("a", 0), ("c", 2)]);
        let e = inputs(
            vec![in_region("a", "r", 4), input("b", "FP32", &[1], None)],
            vec![vec![0; 4], vec![0; 4]],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("1 inputs not in shared memory"),
            "{e}"
        );
        let mut both = in_region("a", "r", 4);
        both.contents = Some(Default::default());
        let e = inputs(vec![both], vec![]).unwrap_err();
        assert!(e.to_string().contains("also carries contents"), "{e}");
    }

    #[test]
    fn outputs_in_shared_memory_keep_the_raw_entries_aligned() {
        let t = |v: f32| Tensor::new(DataType::Fp32, vec![1], v.to_le_bytes().to_vec()).unwrap();
        let (a, b) = (("a".to_string(), t(1.0)), ("b".to_string(), t(2.0)));
        let at = SharedRef {
            region: "out".into(),
            byte_size: 16,
            offset: 4,
        };
        let (described, raw) = outputs(&[&a, &b], |name| (name == "a").then_some(&at));
        assert_eq!(raw, vec![Vec::new(), 2f32.to_le_bytes().to_vec()]);
        let value = |key: &str| described[0].parameters[key].parameter_choice.clone();
        use super::super::proto::infer_parameter::ParameterChoice;
        assert_eq!(
            value("shared_memory_region"),
            Some(ParameterChoice::StringParam("out".into()))
        );
        assert_eq!(
            value("shared_memory_byte_size"),
            Some(ParameterChoice::Int64Param(4))
        );
        assert_eq!(
            value("shared_memory_offset"),
            Some(ParameterChoice::Int64Param(4))
        );
        assert!(described[1].parameters.is_empty());
        let (_, raw) = outputs(&[&a], |_| Some(&at));
        assert!(raw.is_empty());
    }
}
