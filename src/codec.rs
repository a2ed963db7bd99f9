//! Tensors in JSON: decoding a `data` array (flat row-major, or nested) into
//! little-endian bytes of the declared datatype, and writing tensor bytes back
//! out as a flat JSON array, without building an intermediate value tree.

use std::fmt;

use gantry_actors::tensor::{element_count, DataType, Tensor};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Builds a tensor from a JSON `data` array; `name` is used in errors.
pub fn tensor_from_json(
    name: &str,
    datatype: &str,
    shape: Vec<usize>,
    data: &RawValue,
) -> Result<Tensor, ApiError> {
    let dtype = parse_datatype(name, datatype)?;
    let count = element_count(&shape);
    // Each JSON value takes at least two bytes ("0,"), which bounds what a
    // declared shape may make us allocate before the data is read.
    let at_most = data.get().len() / 2 + 1;
    let mut bytes = Vec::with_capacity(count.min(at_most) * dtype.size());
    let mut de = serde_json::Deserializer::from_str(data.get());
    Flatten {
        dtype,
        out: &mut bytes,
    }
    .deserialize(&mut de)
    .map_err(|e| ApiError::InvalidTensor(format!("input '{name}': {e}")))?;
    let got = bytes.len() / dtype.size();
    if got != count {
        return Err(ApiError::InvalidTensor(format!(
            "input '{name}': shape {shape:?} needs {count} values, data holds {got}"
        )));
    }
    Tensor::new(dtype, shape, bytes)
        .map_err(|e| ApiError::InvalidTensor(format!("input '{name}': {e}")))
}

/// Parses a KServe datatype name, with an error naming the input.
pub fn parse_datatype(name: &str, datatype: &str) -> Result<DataType, ApiError> {
    DataType::parse(datatype).ok_or_else(|| {
        let known: Vec<&str> = DataType::ALL.iter().map(|d| d.as_str()).collect();
        ApiError::InvalidTensor(format!(
            "input '{name}': datatype '{datatype}' is not supported; use one of {}",
            known.join(", ")
        ))
    })
}

/// Reads numbers (or booleans) at any nesting depth and appends each,
/// converted to `dtype`, to `out`.
struct Flatten<'a> {
    dtype: DataType,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of {} values", self.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let dtype = self.dtype;
        while seq
            .next_element_seed(Flatten {
                dtype,
                out: &mut *self.out,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        match self.dtype {
            DataType::Bool => {
                self.out.push(u8::from(v));
                Ok(())
            }
            other => Err(E::custom(format!("true/false is not a {other} value"))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        push_integer(self.dtype, self.out, i128::from(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        push_integer(self.dtype, self.out, i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match self.dtype {
            DataType::Fp32 => self.out.extend_from_slice(&(v as f32).to_le_bytes()),
            DataType::Fp64 => self.out.extend_from_slice(&v.to_le_bytes()),
            other if v.fract() == 0.0 && v.abs() < 1e19 => {
                return push_integer(other, self.out, v as i128)
            }
            other => return Err(E::custom(format!("{v} is not a {other} value"))),
        }
        Ok(())
    }
}

fn push_integer<E: de::Error>(dtype: DataType, out: &mut Vec<u8>, v: i128) -> Result<(), E> {
    fn fit<T: TryFrom<i128>, E: de::Error>(v: i128, dtype: DataType) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range for {dtype}")))
    }
    match dtype {
        DataType::Bool => {
            if v != 0 && v != 1 {
                return Err(E::custom(format!(
                    "{v} is not a BOOL value (use true/false or 0/1)"
                )));
            }
            out.push(v as u8);
        }
        DataType::Uint8 => out.push(fit::<u8, E>(v, dtype)?),
        DataType::Uint16 => out.extend_from_slice(&fit::<u16, E>(v, dtype)?.to_le_bytes()),
        DataType::Uint32 => out.extend_from_slice(&fit::<u32, E>(v, dtype)?.to_le_bytes()),
        DataType::Uint64 => out.extend_from_slice(&fit::<u64, E>(v, dtype)?.to_le_bytes()),
        DataType::Int8 => out.extend_from_slice(&fit::<i8, E>(v, dtype)?.to_le_bytes()),
        DataType::Int16 => out.extend_from_slice(&fit::<i16, E>(v, dtype)?.to_le_bytes()),
        DataType::Int32 => out.extend_from_slice(&fit::<i32, E>(v, dtype)?.to_le_bytes()),
        DataType::Int64 => out.extend_from_slice(&fit::<i64, E>(v, dtype)?.to_le_bytes()),
        DataType::Fp32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
        DataType::Fp64 => out.extend_from_slice(&(v as f64).to_le_bytes()),
    }
    Ok(())
}

/// Serializes a tensor's elements as a flat JSON array of its datatype.
pub struct JsonData<'a>(pub &'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let mut seq = serializer.serialize_seq(Some(t.len()))?;
        macro_rules! each {
            ($ty:ty, $n:expr) => {
                for c in t.data.chunks_exact($n) {
                    seq.serialize_element(&<$ty>::from_le_bytes(
                        c.try_into().expect("chunk size"),
                    ))?;
                }
            };
        }
        match t.dtype {
            DataType::Bool => {
                for &b in &t.data {
                    seq.serialize_element(&(b != 0))?;
                }
            }
            DataType::Uint8 => each!(u8, 1),
            DataType::Uint16 => each!(u16, 2),
            DataType::Uint32 => each!(u32, 4),
            DataType::Uint64 => each!(u64, 8),
            DataType::Int8 => each!(i8, 1),
            DataType::Int16 => each!(i16, 2),
            DataType::Int32 => each!(i32, 4),
            DataType::Int64 => each!(i64, 8),
            DataType::Fp32 => each!(f32, 4),
            DataType::Fp64 => each!(f64, 8),
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(datatype: &str, shape: Vec<usize>, json: &str) -> Result<Tensor, ApiError> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        tensor_from_json("x", datatype, shape, &raw)
    }

    #[test]
    fn flat_and_nested_arrays_decode_alike() {
        let flat = decode("FP32", vec![2, 2], "[1, 2.5, 3, 4]").unwrap();
        let nested = decode("FP32", vec![2, 2], "[[1, 2.5], [3, 4]]").unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.to_f32().unwrap(), vec![1.0, 2.5, 3.0, 4.0]);
    }

    #[test]
    fn every_datatype_round_trips_through_json() {
        let cases = [
            ("BOOL", "[true,false,true]"),
            ("UINT8", "[0,7,255]"),
            ("UINT16", "[0,7,65535]"),
            ("UINT32", "[0,7,4294967295]"),
            ("UINT64", "[0,7,18446744073709551615]"),
            ("INT8", "[-128,0,127]"),
            ("INT16", "[-32768,0,32767]"),
            ("INT32", "[-2147483648,0,2147483647]"),
            ("INT64", "[-9223372036854775808,0,9223372036854775807]"),
            ("FP32", "[-1.5,0.0,3.25]"),
            ("FP64", "[-1.5,0.0,1e+300]"),
        ];
        for (datatype, json) in cases {
            let t = decode(datatype, vec![3], json).unwrap();
            assert_eq!(t.dtype.as_str(), datatype);
            assert_eq!(
                serde_json::to_string(&JsonData(&t)).unwrap(),
                json,
                "{datatype}"
            );
        }
    }

    #[test]
    fn wrong_values_are_clear_errors() {
        let cases = [
            ("UINT8", "[256]", "out of range for UINT8"),
            ("INT32", "[1.5]", "1.5 is not a INT32"),
            ("FP32", "[true]", "not a FP32"),
            ("FP32", "[\"a\"]", "x"),
            ("FP16", "[1]", "datatype 'FP16' is not supported"),
        ];
        for (datatype, json, needle) in cases {
            let err = decode(datatype, vec![1], json).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        let err = decode("FP32", vec![2, 2], "[1, 2, 3]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 4 values, data holds 3"), "{err}");
    }
}
