//! Tensors in JSON: decoding a `data` array (flat row-major, or nested) into
//! little-endian bytes of the declared datatype, and writing tensor bytes back
//! out as a flat JSON array, without building an intermediate value tree.
//!
//! Every value must fit its datatype: a number outside an integer type's
//! range, a fraction for an integer type, a finite number beyond FP32's
//! range, or a non-boolean for BOOL is refused with its index, never
//! wrapped, clamped or rounded to infinity. JSON has no NaN or infinity, so
//! float tensors carry them as the strings `"NaN"`, `"Infinity"` and
//! `"-Infinity"` (protobuf's JSON mapping, which Python's `float()`,
//! JavaScript's `Number()` and NumPy read), both in answers and in inputs.

use std::fmt;

use gantry_actors::tensor::{element_count, DataType, Tensor};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// The JSON strings that stand for the float values JSON cannot write.
pub const NAN: &str = "NaN";
pub const INFINITY: &str = "Infinity";
pub const NEG_INFINITY: &str = "-Infinity";

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
    let mut refused = None;
    let mut de = serde_json::Deserializer::from_str(data.get());
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
    let got = bytes.len() / dtype.size();
    if got != count {
        return Err(ApiError::InvalidTensor(format!(
            "input '{name}': shape {shape:?} needs {count} values, data holds {got}"
        )));
    }
    Tensor::new(dtype, shape, bytes)
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
            DataType::Fp32 | DataType::Fp64 => self.push_float(special),
            _ => Err(self.refuse(format_args!("{v:?}"), "is not a value of")),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.refuse("null", "is not a value of"))
    }
}

/// Serializes a tensor's elements as a flat JSON array of its datatype;
/// float NaN and infinities as the strings `"NaN"`, `"Infinity"` and
/// `"-Infinity"`.
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

    fn encode(t: &Tensor) -> String {
        serde_json::to_string(&JsonData(t)).unwrap()
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
            ("FP32", "[-3.4028235e+38,1e-45,3.4028235e+38]"),
            ("FP64", "[-1.5,0.0,1e+300]"),
        ];
        for (datatype, json) in cases {
            let t = decode(datatype, vec![3], json).unwrap();
            assert_eq!(t.dtype.as_str(), datatype);
            assert_eq!(encode(&t), json, "{datatype}");
        }
        // Whole numbers written as floats are integers.
        let t = decode("INT32", vec![3], "[3.0, -1e3, 0.0]").unwrap();
        assert_eq!(encode(&t), "[3,-1000,0]");
        assert_eq!(
            encode(&decode("BOOL", vec![2], "[1, 0.0]").unwrap()),
            "[true,false]"
        );
    }

    #[test]
    fn values_that_do_not_fit_are_refused_with_index_and_range() {
        let cases = [
            ("FP32", "[0, 1e39]", "the value 1e39 at index 1 is out of range for FP32 (-3.4028235e38 to 3.4028235e38"),
            ("FP32", "[[0, 1], [-3.5e38, 2]]", "the value -3.5e38 at index 2 is out of range for FP32"),
            ("FP64", "[1, 1e400]", "the value at index 1 is out of range for FP64 (-1.7976931348623157e308"),
            ("UINT8", "[[1, 2], [3, 256]]", "the value 256 at index 3 is out of range for UINT8 (0 to 255)"),
            ("UINT8", "[-1]", "the value -1 at index 0 is out of range for UINT8 (0 to 255)"),
            ("UINT16", "[65536]", "65536 at index 0 is out of range for UINT16 (0 to 65535)"),
            ("UINT32", "[-5]", "-5 at index 0 is out of range for UINT32 (0 to 4294967295)"),
            ("UINT64", "[18446744073709551616]", "the value 18446744073709551616 at index 0 is out of range for UINT64 (0 to 18446744073709551615)"),
            ("INT8", "[127, -129]", "-129 at index 1 is out of range for INT8 (-128 to 127)"),
            ("INT16", "[32768]", "32768 at index 0 is out of range for INT16 (-32768 to 32767)"),
            ("INT32", "[2147483648]", "out of range for INT32 (-2147483648 to 2147483647)"),
            ("INT32", "[1e10]", "10000000000 at index 0 is out of range for INT32"),
            ("INT64", "[9223372036854775808]", "out of range for INT64 (-9223372036854775808 to 9223372036854775807)"),
            ("INT64", "[-9223372036854775809]", "at index 0 is out of range for INT64"),
            ("INT32", "[1, 1.5]", "the value 1.5 at index 1 is not a whole number, as needed by INT32"),
            ("UINT8", "[0.5]", "0.5 at index 0 is not a whole number, as needed by UINT8"),
            ("BOOL", "[true, 2]", "the value 2 at index 1 is not a value of BOOL (true or false, or 0 or 1)"),
            ("BOOL", "[0.5]", "0.5 at index 0 is not a value of BOOL"),
            ("BOOL", "[\"true\"]", "\"true\" at index 0 is not a value of BOOL"),
            ("FP32", "[true]", "true at index 0 is not a value of FP32"),
            ("FP32", "[\"a\"]", "\"a\" at index 0 is not a value of FP32 (-3.4028235e38 to 3.4028235e38, or the strings \"NaN\", \"Infinity\", \"-Infinity\")"),
            ("FP32", "[1, null]", "null at index 1 is not a value of FP32"),
            ("FP64", "[\"nan\"]", "\"nan\" at index 0 is not a value of FP64"),
            ("INT32", "[\"NaN\"]", "\"NaN\" at index 0 is not a value of INT32"),
            ("FP16", "[1]", "datatype 'FP16' is not supported"),
        ];
        for (datatype, json, needle) in cases {
            let err = decode(datatype, vec![4], json).unwrap_err();
            assert!(matches!(err, ApiError::InvalidTensor(_)), "{err:?}");
            let err = err.to_string();
            assert!(err.contains("input 'x'"), "{err} lacks the input name");
            assert!(
                err.contains(needle),
                "{datatype} {json}: {err} lacks {needle}"
            );
            assert!(!err.contains("line 1"), "{err}");
        }
        let err = decode("FP32", vec![2, 2], "[1, 2, 3]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 4 values, data holds 3"), "{err}");
    }

    #[test]
    fn binary_bools_are_zero_or_one() {
        let ok = Tensor::new(DataType::Bool, vec![3], vec![0, 1, 1]).unwrap();
        assert!(check_bools("x", &ok).is_ok());
        let bad = Tensor::new(DataType::Bool, vec![3], vec![0, 1, 2]).unwrap();
        let err = check_bools("x", &bad).unwrap_err().to_string();
        assert!(err.contains("input 'x': the byte 2 at index 2"), "{err}");
        let bytes = Tensor::new(DataType::Uint8, vec![1], vec![7]).unwrap();
        assert!(check_bools("x", &bytes).is_ok());
    }

    #[test]
    fn nan_and_infinities_are_strings_both_ways() {
        let t =
            Tensor::from_f32(vec![4], &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.5]).unwrap();
        let json = encode(&t);
        assert_eq!(json, r#"["NaN","Infinity","-Infinity",-0.5]"#);
        let back = decode("FP32", vec![4], &json).unwrap().to_f32().unwrap();
        assert!(back[0].is_nan());
        assert_eq!(back[1..], [f32::INFINITY, f32::NEG_INFINITY, -0.5]);

        let wide: Vec<u8> = [f64::NEG_INFINITY, f64::NAN, 1e300]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = Tensor::new(DataType::Fp64, vec![3], wide).unwrap();
        let json = encode(&t);
        assert_eq!(json, r#"["-Infinity","NaN",1e+300]"#);
        assert_eq!(encode(&decode("FP64", vec![3], &json).unwrap()), json);
    }
}
