//! Writing a tensor's elements as a flat JSON array straight into the
//! answer's buffer: floats with `zmij` (shortest round-trip digits, what
//! serde_json itself uses), integers with `itoa`, one `extend_from_slice`
//! each, without serde's per-element calls. NaN and infinities are written
//! as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`; BYTES elements as
//! JSON strings (through serde_json, which escapes them). [`object_with_array`]
//! puts such an array as the last member of an object serde writes.

use gantry_actors::tensor::{DataType, Tensor};
use half::{bf16, f16};
use serde::Serialize;

use super::{INFINITY, NAN, NEG_INFINITY};

/// Appends `tensor`'s elements to `out` as one JSON array; an error when a
/// BYTES element is not UTF-8 (it could only be written lossily).
pub fn json_array(tensor: &Tensor, out: &mut Vec<u8>) -> Result<(), String> {
    let data = &tensor.data;
    // Most floats take 8-12 characters: reserve once for the common case.
    out.reserve(2 + tensor.len() * 11);
    out.push(b'[');
    let mut floats = zmij::Buffer::new();
    let mut ints = itoa::Buffer::new();
    macro_rules! each {
        ($ty:ty, $n:expr, $write:expr) => {
            for (index, c) in data.chunks_exact($n).enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                let v = <$ty>::from_le_bytes(c.try_into().expect("chunk size"));
                $write(v, &mut *out);
            }
        };
    }
    let mut int = |v: i128, out: &mut Vec<u8>| out.extend_from_slice(ints.format(v).as_bytes());
    let float = |v: f64, short: &str, out: &mut Vec<u8>| {
        if v.is_finite() {
            out.extend_from_slice(short.as_bytes());
        } else {
            let name = if v.is_nan() {
                NAN
            } else if v > 0.0 {
                INFINITY
            } else {
                NEG_INFINITY
            };
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
        }
    };
    match tensor.dtype {
        DataType::Bool => {
            for (index, &b) in data.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(if b != 0 { b"true" } else { b"false" });
            }
        }
        DataType::Uint8 => each!(u8, 1, |v, o| int(i128::from(v), o)),
        DataType::Uint16 => each!(u16, 2, |v, o| int(i128::from(v), o)),
        DataType::Uint32 => each!(u32, 4, |v, o| int(i128::from(v), o)),
        DataType::Uint64 => each!(u64, 8, |v, o| int(i128::from(v), o)),
        DataType::Int8 => each!(i8, 1, |v, o| int(i128::from(v), o)),
        DataType::Int16 => each!(i16, 2, |v, o| int(i128::from(v), o)),
        DataType::Int32 => each!(i32, 4, |v, o| int(i128::from(v), o)),
        DataType::Int64 => each!(i64, 8, |v, o| int(i128::from(v), o)),
        DataType::Fp32 => each!(f32, 4, |v: f32, o| float(f64::from(v), floats.format(v), o)),
        DataType::Fp64 => each!(f64, 8, |v: f64, o| float(v, floats.format(v), o)),
        DataType::Fp16 => each!(f16, 2, |v: f16, o| {
            let v = v.to_f32();
            float(f64::from(v), floats.format(v), o)
        }),
        DataType::Bf16 => each!(bf16, 2, |v: bf16, o| {
            let v = v.to_f32();
            float(f64::from(v), floats.format(v), o)
        }),
        DataType::Bytes => {
            for (index, element) in tensor
                .bytes_elements()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if index > 0 {
                    out.push(b',');
                }
                let text = std::str::from_utf8(element).map_err(|_| {
                    "a BYTES element is not UTF-8; ask for the output as binary data".to_string()
                })?;
                serde_json::to_writer(&mut *out, text).map_err(|e| e.to_string())?;
            }
        }
    }
    out.push(b']');
    Ok(())
}

/// Appends `head` (a struct, as serde writes it) with one more member,
/// `key`, whose value is `tensor`'s JSON array: `{...head's members,
/// "key":[...]}`. Large answers are mostly this array; writing it here
/// spares serde's per-element calls and a second pass over raw JSON.
pub fn object_with_array<H: Serialize>(
    out: &mut Vec<u8>,
    head: &H,
    key: &str,
    tensor: &Tensor,
) -> Result<(), String> {
    let start = out.len();
    serde_json::to_writer(&mut *out, head).map_err(|e| e.to_string())?;
    if out.last() != Some(&b'}') || out.get(start) != Some(&b'{') {
        return Err("the JSON head is not an object".into());
    }
    out.pop();
    if out.len() > start + 1 {
        out.push(b',');
    }
    serde_json::to_writer(&mut *out, key).map_err(|e| e.to_string())?;
    out.push(b':');
    json_array(tensor, out)?;
    out.push(b'}');
    Ok(())
}
