//! Tensors in JSON: decoding a `data` array (flat row-major, or nested) into
//! little-endian bytes of the declared datatype, and writing tensor bytes back
//! out as a flat JSON array, without building an intermediate value tree.
//! Arrays of plain numbers, what clients send, take a one-pass scanner
//! ([`scan`]); anything else (strings, booleans, null, a value that does not
//! fit) the general serde path, which also words the errors.
//!
//! Every value must fit its datatype: a number outside an integer type's
//! range, a fraction for an integer type, a finite number beyond FP32's
//! range, or a non-boolean for BOOL is refused with its index, never
//! wrapped, clamped or rounded to infinity. JSON has no NaN or infinity, so
//! float tensors carry them as the strings `"NaN"`, `"Infinity"` and
//! `"-Infinity"` (protobuf's JSON mapping, which Python's `float()`,
//! JavaScript's `Number()` and NumPy read), both in answers and in inputs.

use std::fmt;

use gantry_actors::tensor::{bytes_data, element_count, DataType, Tensor};
use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use crate::error::ApiError;

mod lift;
mod scan;
mod write;

pub use lift::{both_ways, LiftedBody};

pub use write::{json_array, object_with_array};

/// The JSON strings that stand for the float values JSON cannot write.
pub const NAN: &str = "NaN";
pub const INFINITY: &str = "Infinity";
pub const NEG_INFINITY: &str = "-Infinity";

/// Builds a tensor from a JSON `data` array; `name` is used in errors.
/// `data` is valid JSON: a `RawValue`'s text, or an array [`LiftedBody`]
/// checked.
pub fn tensor_from_json(
    name: &str,
    datatype: &str,
    shape: Vec<usize>,
    data: &str,
) -> Result<Tensor, ApiError> {
    let dtype = parse_datatype(name, datatype)?;
    if dtype.is_variable() {
        return bytes_from_json(name, shape, data);
    }
    let count = element_count(&shape);
    // Each JSON value takes at least two bytes ("0,"), which bounds what a
    // declared shape may make us allocate before the data is read.
    let at_most = data.len() / 2 + 1;
    let capacity = count.min(at_most);
    let bytes = match scan::plain_numbers(dtype, data.as_bytes(), capacity) {
        Some(bytes) => bytes,
        None => general(name, dtype, data, capacity)?,
    };
    let got = bytes.len() / dtype.size();
    if got != count {
        return Err(ApiError::InvalidTensor(format!(
            "input '{name}': shape {shape:?} needs {count} values, data holds {got}"
        )));
    }
    Tensor::new(dtype, shape, bytes)
        .map_err(|e| ApiError::InvalidTensor(format!("input '{name}': {e}")))
}

/// The general path: any JSON the data may hold, through serde, with the
/// reason and index of the first value that does not fit.
fn general(name: &str, dtype: DataType, data: &str, capacity: usize) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::with_capacity(capacity * dtype.size());
    let mut refused = None;
    let mut de = serde_json::Deserializer::from_str(data);
    let decoded = Flatten {
        dtype,
        out: &mut bytes,
        refused: &mut refused,
    }
    .deserialize(&mut de);
    if let Err(e) = decoded {
        let index = bytes.len() / dtype.size();
        return Err(ApiError::InvalidTensor(match refused {
            // The value's own message, without serde's line and column.
            Some(why) => format!("input '{name}': {why}"),
            None if e.to_string().starts_with("number out of range") => format!(
                "input '{name}': the value at index {index} is out of range for {dtype} ({})",
                range(dtype)
            ),
            None => format!("input '{name}': {e}"),
        }));
    }
    Ok(bytes)
}

/// Builds a BYTES tensor from JSON strings (flat or nested), each one
/// element: its UTF-8 bytes.
fn bytes_from_json(name: &str, shape: Vec<usize>, data: &str) -> Result<Tensor, ApiError> {
    fn flatten<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a [u8]>) -> Result<(), String> {
        match value {
            serde_json::Value::String(text) => {
                out.push(text.as_bytes());
                Ok(())
            }
            serde_json::Value::Array(items) => items.iter().try_for_each(|item| flatten(item, out)),
            other => Err(format!(
                "the value {other} at index {} is not a value of BYTES (a string)",
                out.len()
            )),
        }
    }
    let value: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| ApiError::InvalidTensor(format!("input '{name}': {e}")))?;
    let mut elements = Vec::new();
    flatten(&value, &mut elements)
        .map_err(|why| ApiError::InvalidTensor(format!("input '{name}': {why}")))?;
    let count = element_count(&shape);
    if elements.len() != count {
        return Err(ApiError::InvalidTensor(format!(
            "input '{name}': shape {shape:?} needs {count} values, data holds {}",
            elements.len()
        )));
    }
    Tensor::new(DataType::Bytes, shape, bytes_data(elements))
        .map_err(|e| ApiError::InvalidTensor(format!("input '{name}': {e}")))
}

/// Refuses a BOOL tensor from raw bytes (the binary extension) holding a
/// byte other than 0 or 1, which is no boolean to ONNX Runtime.
pub fn check_bools(name: &str, tensor: &Tensor) -> Result<(), ApiError> {
    if tensor.dtype != DataType::Bool {
        return Ok(());
    }
    match tensor.data.iter().position(|&b| b > 1) {
        None => Ok(()),
        Some(index) => Err(ApiError::InvalidTensor(format!(
            "input '{name}': the byte {} at index {index} is not a value of BOOL (0 or 1)",
            tensor.data[index]
        ))),
    }
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

/// The values `dtype` takes, for error messages.
fn range(dtype: DataType) -> String {
    let floats = |max: &dyn fmt::Debug| {
        format!("-{max:?} to {max:?}, or the strings \"{NAN}\", \"{INFINITY}\", \"{NEG_INFINITY}\"")
    };
    match dtype {
        DataType::Bool => "true or false, or 0 or 1".into(),
        DataType::Uint8 => format!("0 to {}", u8::MAX),
        DataType::Uint16 => format!("0 to {}", u16::MAX),
        DataType::Uint32 => format!("0 to {}", u32::MAX),
        DataType::Uint64 => format!("0 to {}", u64::MAX),
        DataType::Int8 => format!("{} to {}", i8::MIN, i8::MAX),
        DataType::Int16 => format!("{} to {}", i16::MIN, i16::MAX),
        DataType::Int32 => format!("{} to {}", i32::MIN, i32::MAX),
        DataType::Int64 => format!("{} to {}", i64::MIN, i64::MAX),
        DataType::Fp32 => floats(&f32::MAX),
        DataType::Fp64 => floats(&f64::MAX),
        DataType::Fp16 => floats(&f16::MAX.to_f32()),
        DataType::Bf16 => floats(&bf16::MAX.to_f32()),
        DataType::Bytes => "strings".into(),
    }
}

/// Reads numbers (or booleans) at any nesting depth and appends each,
/// converted to `dtype`, to `out`. A value that does not fit leaves its
/// reason in `refused`.
struct Flatten<'a> {
    dtype: DataType,
    out: &'a mut Vec<u8>,
    refused: &'a mut Option<String>,
}

impl Flatten<'_> {
    /// The flat index of the value being read.
    fn index(&self) -> usize {
        self.out.len() / self.dtype.size()
    }

    /// Refuses the value at the current index: `what` it is, `why` not.
    fn refuse<E: de::Error>(self, what: impl fmt::Display, why: &str) -> E {
        let dtype = self.dtype;
        let message = format!(
            "the value {what} at index {} {why} {dtype} ({})",
            self.index(),
            range(dtype)
        );
        *self.refused = Some(message.clone());
        E::custom(message)
    }

    fn push_integer<E: de::Error>(self, v: i128) -> Result<(), E> {
        let out = &mut *self.out;
        macro_rules! put {
            ($ty:ty) => {
                match <$ty>::try_from(v) {
                    Ok(x) => {
                        out.extend_from_slice(&x.to_le_bytes());
                        true
                    }
                    Err(_) => false,
                }
            };
        }
        let stored = match self.dtype {
            DataType::Bool => {
                let bit = matches!(v, 0 | 1);
                if bit {
                    out.push(v as u8);
                }
                bit
            }
            DataType::Uint8 => put!(u8),
            DataType::Uint16 => put!(u16),
            DataType::Uint32 => put!(u32),
            DataType::Uint64 => put!(u64),
            DataType::Int8 => put!(i8),
            DataType::Int16 => put!(i16),
            DataType::Int32 => put!(i32),
            DataType::Int64 => put!(i64),
            // Every i64 and u64 is within FP32's range (rounded to 24 bits).
            DataType::Fp32 => {
                out.extend_from_slice(&(v as f32).to_le_bytes());
                true
            }
            DataType::Fp64 => {
                out.extend_from_slice(&(v as f64).to_le_bytes());
                true
            }
            DataType::Fp16 => {
                let x = f16::from_f64(v as f64);
                if x.is_finite() {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                x.is_finite()
            }
            DataType::Bf16 => {
                let x = bf16::from_f64(v as f64);
                if x.is_finite() {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                x.is_finite()
            }
            DataType::Bytes => false,
        };
        match stored {
            true => Ok(()),
            false if self.dtype == DataType::Bool => Err(self.refuse(v, "is not a value of")),
            false => Err(self.refuse(v, "is out of range for")),
        }
    }

    fn push_float<E: de::Error>(self, v: f64) -> Result<(), E> {
        match self.dtype {
            DataType::Fp32 => {
                let narrowed = v as f32;
                if narrowed.is_infinite() && v.is_finite() {
                    return Err(self.refuse(format_args!("{v:?}"), "is out of range for"));
                }
                self.out.extend_from_slice(&narrowed.to_le_bytes());
                Ok(())
            }
            DataType::Fp64 => {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            DataType::Fp16 => {
                let narrowed = f16::from_f64(v);
                if narrowed.is_infinite() && v.is_finite() {
                    return Err(self.refuse(format_args!("{v:?}"), "is out of range for"));
                }
                self.out.extend_from_slice(&narrowed.to_le_bytes());
                Ok(())
            }
            DataType::Bf16 => {
                let narrowed = bf16::from_f64(v);
                if narrowed.is_infinite() && v.is_finite() {
                    return Err(self.refuse(format_args!("{v:?}"), "is out of range for"));
                }
                self.out.extend_from_slice(&narrowed.to_le_bytes());
                Ok(())
            }
            // Whole numbers written with a fraction part or an exponent
            // (`3.0`, `1e3`) are integers of any integer type.
            // i128 holds them all exactly. A literal below i64::MIN arrives
            // here rounded to -2^63, so that value is refused as out of range.
            _ if v.fract() == 0.0 && v > i64::MIN as f64 && v < 1.7e38 => {
                self.push_integer(v as i128)
            }
            _ if v.fract() == 0.0 => Err(self.refuse(format_args!("{v:?}"), "is out of range for")),
            DataType::Bool => Err(self.refuse(format_args!("{v:?}"), "is not a value of")),
            _ => Err(self.refuse(format_args!("{v:?}"), "is not a whole number, as needed by")),
        }
    }
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
                refused: &mut *self.refused,
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
            _ => Err(self.refuse(v, "is not a value of")),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push_integer(i128::from(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push_integer(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push_float(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let special = match v {
            NAN => f64::NAN,
            INFINITY => f64::INFINITY,
            NEG_INFINITY => f64::NEG_INFINITY,
            _ => return Err(self.refuse(format_args!("{v:?}"), "is not a value of")),
        };
        match self.dtype {
            DataType::Fp32 | DataType::Fp64 | DataType::Fp16 | DataType::Bf16 => {
                self.push_float(special)
            }
            _ => Err(self.refuse(format_args!("{v:?}"), "is not a value of")),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.refuse("null", "is not a value of"))
    }
}

/// Serializes a tensor's elements as a flat JSON array of its datatype;
/// float NaN and infinities as the strings `"NaN"`, `"Infinity"` and
/// `"-Infinity"`: the same text as [`json_array`], through serde, for
/// answers that nest tensors where [`object_with_array`] cannot reach.
pub struct JsonData<'a>(pub &'a Tensor);

/// A float as a JSON number, or as its string when JSON has no number for it.
fn float_element<S: SerializeSeq, F: Serialize>(
    seq: &mut S,
    v: F,
    finite: bool,
    wide: f64,
) -> Result<(), S::Error> {
    if finite {
        seq.serialize_element(&v)
    } else if wide.is_nan() {
        seq.serialize_element(NAN)
    } else if wide > 0.0 {
        seq.serialize_element(INFINITY)
    } else {
        seq.serialize_element(NEG_INFINITY)
    }
}

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
            DataType::Fp32 => {
                for c in t.data.chunks_exact(4) {
                    let v = f32::from_le_bytes(c.try_into().expect("chunk size"));
                    float_element(&mut seq, v, v.is_finite(), f64::from(v))?;
                }
            }
            DataType::Fp64 => {
                for c in t.data.chunks_exact(8) {
                    let v = f64::from_le_bytes(c.try_into().expect("chunk size"));
                    float_element(&mut seq, v, v.is_finite(), v)?;
                }
            }
            DataType::Fp16 => {
                for c in t.data.chunks_exact(2) {
                    let v = f16::from_le_bytes([c[0], c[1]]).to_f32();
                    float_element(&mut seq, v, v.is_finite(), f64::from(v))?;
                }
            }
            DataType::Bf16 => {
                for c in t.data.chunks_exact(2) {
                    let v = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                    float_element(&mut seq, v, v.is_finite(), f64::from(v))?;
                }
            }
            DataType::Bytes => {
                // ONNX Runtime's strings are UTF-8; anything else could only
                // be written lossily, so it is refused.
                for element in t.bytes_elements().unwrap_or_default() {
                    let text = std::str::from_utf8(element).map_err(|_| {
                        serde::ser::Error::custom(
                            "a BYTES element is not UTF-8; ask for the output as binary data",
                        )
                    })?;
                    seq.serialize_element(text)?;
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests;
