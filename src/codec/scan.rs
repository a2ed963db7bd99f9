//! The fast path for JSON tensor data: one pass over the bytes of an
//! array of plain numbers (flat or nested), each number parsed straight
//! into the datatype's little-endian bytes, without serde's visitor calls
//! per element.
//!
//! Hand-written because no crate scans a JSON number array into typed
//! bytes; the float parsing itself is `fast-float2` (Eisel-Lemire, correctly
//! rounded). `make bench-micro` compares it with serde_json: faster on small
//! tensors, not yet on large ones (load-tests/MICRO_RESULTS.md).
//!
//! The text comes from a `RawValue`, which serde_json has already checked
//! is valid JSON, so the scanner only splits tokens. It gives up (`None`)
//! on anything but brackets, commas, whitespace and numbers that fit the
//! datatype as they are written (and `true`/`false` for BOOL): strings,
//! `null`, objects, an integer written with a fraction or an exponent, a
//! value out of range. The caller then decodes with the general path, which
//! accepts or refuses exactly as before and says why.

use gantry_actors::tensor::DataType;
use half::{bf16, f16};

/// The bytes of `text`'s numbers as `dtype`, or `None` when it holds
/// anything the general path must judge. `capacity` is the number of
/// elements to reserve room for.
pub fn plain_numbers(dtype: DataType, text: &[u8], capacity: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity * dtype.size());
    let n = text.len();
    let mut i = 0;
    while i < n {
        match text[i] {
            b'[' | b']' | b',' | b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < n && matches!(text[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                    i += 1;
                }
                push(dtype, &text[start..i], &mut out)?;
            }
            b't' if dtype == DataType::Bool && text[i..].starts_with(b"true") => {
                out.push(1);
                i += 4;
            }
            b'f' if dtype == DataType::Bool && text[i..].starts_with(b"false") => {
                out.push(0);
                i += 5;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Appends one number token as `dtype`; `None` when it is not plainly a
/// value of it.
fn push(dtype: DataType, token: &[u8], out: &mut Vec<u8>) -> Option<()> {
    match dtype {
        DataType::Fp32 => {
            let v: f32 = fast_float2::parse(token).ok()?;
            v.is_finite()
                .then(|| out.extend_from_slice(&v.to_le_bytes()))
        }
        DataType::Fp64 => {
            let v: f64 = fast_float2::parse(token).ok()?;
            v.is_finite()
                .then(|| out.extend_from_slice(&v.to_le_bytes()))
        }
        DataType::Fp16 => {
            let v = f16::from_f64(fast_float2::parse(token).ok()?);
            v.is_finite()
                .then(|| out.extend_from_slice(&v.to_le_bytes()))
        }
        DataType::Bf16 => {
            let v = bf16::from_f64(fast_float2::parse(token).ok()?);
            v.is_finite()
                .then(|| out.extend_from_slice(&v.to_le_bytes()))
        }
        DataType::Bool => {
            let bit = match token {
                b"0" => 0,
                b"1" => 1,
                _ => return None,
            };
            out.push(bit);
            Some(())
        }
        DataType::Uint8 => put::<u8, 1>(token, out, u8::to_le_bytes),
        DataType::Uint16 => put::<u16, 2>(token, out, u16::to_le_bytes),
        DataType::Uint32 => put::<u32, 4>(token, out, u32::to_le_bytes),
        DataType::Uint64 => put::<u64, 8>(token, out, u64::to_le_bytes),
        DataType::Int8 => put::<i8, 1>(token, out, i8::to_le_bytes),
        DataType::Int16 => put::<i16, 2>(token, out, i16::to_le_bytes),
        DataType::Int32 => put::<i32, 4>(token, out, i32::to_le_bytes),
        DataType::Int64 => put::<i64, 8>(token, out, i64::to_le_bytes),
        DataType::Bytes => None,
    }
}

/// Parses `token` as an integer of `T` and writes its bytes, or `None`
/// when it is not one or does not fit.
fn put<T: TryFrom<i128>, const N: usize>(
    token: &[u8],
    out: &mut Vec<u8>,
    bytes: fn(T) -> [u8; N],
) -> Option<()> {
    let v = T::try_from(integer(token)?).ok()?;
    out.extend_from_slice(&bytes(v));
    Some(())
}

/// A token of digits with an optional minus sign, as an integer; `None`
/// for a fraction or exponent (the general path decides whether such a
/// number is whole) or more digits than any integer type holds.
fn integer(token: &[u8]) -> Option<i128> {
    let (negative, digits) = match token {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, token),
    };
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut v: i128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i128::from(d - b'0');
    }
    Some(if negative { -v } else { v })
}
