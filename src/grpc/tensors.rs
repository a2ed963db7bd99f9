//! Tensors between Triton's gRPC messages and Gantry's: a request's inputs
//! from `raw_input_contents` (little-endian bytes, BYTES elements each
//! after its 4-byte length, as the HTTP binary extension has them) or from
//! the typed `contents` lists, and the answer's outputs as
//! `raw_output_contents`, which is what Triton sends and what
//! `tritonclient.grpc` reads.

use gantry_actors::tensor::DataType;
use gantry_actors::Tensor;

use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::InferTensorContents;
use crate::codec::{check_bools, parse_datatype};
use crate::error::ApiError;

/// The request's inputs, in order: each from its raw bytes when the
/// request sends `raw_input_contents` (one entry an input), else from its
/// typed contents.
pub fn inputs(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Vec<u8>>,
) -> Result<Vec<(String, Tensor)>, ApiError> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(ApiError::BadRequest(format!(
            "the request has {} inputs and {} raw_input_contents; send one raw entry per input, or none",
            inputs.len(),
            raw.len()
        )));
    }
    let mut raw = raw.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            if input.parameters.contains_key("shared_memory_region") {
                return Err(ApiError::BadRequest(format!(
                    "input '{}': inputs in shared memory are not read over gRPC yet; send its \
                     bytes, or use the HTTP API",
                    input.name
                )));
            }
            let dtype = parse_datatype(&input.name, &input.datatype)?;
            let shape = shape(&input.name, &input.shape)?;
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
            Ok((input.name, tensor))
        })
        .collect()
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

/// An output's description and its bytes for `raw_output_contents`.
pub fn output(name: &str, tensor: &Tensor) -> (InferOutputTensor, Vec<u8>) {
    (
        InferOutputTensor {
            name: name.to_string(),
            datatype: tensor.dtype.as_str().to_string(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            parameters: Default::default(),
            contents: None,
        },
        tensor.data.clone(),
    )
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
        assert_eq!(from_raw, from_typed);
        assert_eq!(from_raw[0].1.shape, vec![2, 2]);
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
        assert_eq!(t[0].1.bytes_elements().unwrap(), vec![&b"ab"[..], &b""[..]]);
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
        assert!(e.to_string().contains("one raw entry per input"), "{e}");
        let e = inputs(
            vec![input("h", "FP16", &[1], Some(Default::default()))],
            vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("raw_input_contents"), "{e}");
        let e = inputs(vec![input("b", "BOOL", &[1], None)], vec![vec![2]]).unwrap_err();
        assert!(e.to_string().contains("not a value of BOOL"), "{e}");
    }
}
