//! The fast path for JSON tensor data: one pass over the bytes of an
//! array of plain numbers (flat or nested), each number parsed straight
//! into the datatype's little-endian bytes, without serde's visitor calls
//! per element.
//!
//! Hand-written because no crate scans a JSON number array into typed
//! bytes. Floats are read in the same pass that finds them: a plain
//! decimal whose digits and power of ten are both exact in the type
//! (`0.1234`: 1234 / 10^4, what clients mostly send) is one correctly
//! rounded division (Clinger's fast path; FP32 also takes it through FP64
//! for the 16-17 digits Python and NumPy write); anything longer, or with
//! an exponent, goes to `fast-float2` (Eisel-Lemire, correctly rounded).
//! `make bench-micro` compares it with serde_json (load-tests/MICRO_RESULTS.md).
//!
//! The text comes from a `RawValue`, which serde_json has checked, or from
//! a body's lifted array (`lift.rs`), which no parser has: the scanner
//! reads it by JSON's grammar (brackets, commas, numbers as JSON writes
//! them) and gives up on anything else. It gives up (`None`)
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
    match dtype {
        DataType::Fp32 => floats::<f32>(text, capacity),
        DataType::Fp64 => floats::<f64>(text, capacity),
        _ => tokens(dtype, text, capacity),
    }
}

/// A float type the one-pass reader writes: which decimals it reads
/// exactly, and how.
trait Float: Copy + 'static + std::ops::Div<Output = Self> + std::ops::Neg<Output = Self> {
    /// The largest integer every smaller one of which is exact in the type.
    const EXACT_MANTISSA: u64;
    /// 10^0.. up to the last power of ten that is exact in the type.
    const POWERS: &'static [Self];
    fn from_mantissa(m: u64) -> Self;
    /// `m / 10^fraction` correctly rounded, when a short computation
    /// gives it; `None` sends the token to `fast-float2`.
    fn from_decimal(m: u64, fraction: u32) -> Option<Self> {
        (m <= Self::EXACT_MANTISSA && (fraction as usize) < Self::POWERS.len())
            .then(|| Self::from_mantissa(m) / Self::POWERS[fraction as usize])
    }
    fn parse(token: &[u8]) -> Option<Self>;
    fn append(self, out: &mut Vec<u8>);
}

impl Float for f32 {
    const EXACT_MANTISSA: u64 = 1 << 24;
    const POWERS: &'static [f32] = &[1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];
    fn from_mantissa(m: u64) -> f32 {
        m as f32
    }
    /// Digits beyond FP32's exact range (Python writes 16-17 of them) are
    /// divided in FP64, exactly rounded there, then narrowed: the one way
    /// that could round twice is an FP64 result lying exactly halfway
    /// between two FP32 values (every such point is an FP64 value), which
    /// is left to `fast-float2`.
    fn from_decimal(m: u64, fraction: u32) -> Option<f32> {
        if m <= Self::EXACT_MANTISSA && (fraction as usize) < Self::POWERS.len() {
            return Some(m as f32 / Self::POWERS[fraction as usize]);
        }
        let wide = f64::from_decimal(m, fraction)?;
        // The 29 bits FP32 drops from FP64's mantissa: 1 then 28 zeros is
        // the halfway point.
        let dropped = wide.to_bits() & ((1 << 29) - 1);
        (dropped != 1 << 28).then_some(wide as f32)
    }
    fn parse(token: &[u8]) -> Option<f32> {
        fast_float2::parse::<f32, _>(token)
            .ok()
            .filter(|v| v.is_finite())
    }
    fn append(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Float for f64 {
    const EXACT_MANTISSA: u64 = 1 << 53;
    const POWERS: &'static [f64] = &[
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    fn from_mantissa(m: u64) -> f64 {
        m as f64
    }
    fn parse(token: &[u8]) -> Option<f64> {
        fast_float2::parse::<f64, _>(token)
            .ok()
            .filter(|v| v.is_finite())
    }
    fn append(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// Reads the digits at `text[*i..]` into `m`, returning how many there were.
#[inline(always)]
fn digits(text: &[u8], i: &mut usize, m: &mut u64) -> u32 {
    let start = *i;
    while let Some(d) = text
        .get(*i)
        .map(|b| b.wrapping_sub(b'0'))
        .filter(|&d| d < 10)
    {
        *m = m.wrapping_mul(10).wrapping_add(u64::from(d));
        *i += 1;
    }
    (*i - start) as u32
}

/// The significant token before, for JSON's grammar of a (nested) array of
/// numbers: a value may follow the start, `[` or `,`; `,` follows a value;
/// `]` follows `[` or a value.
#[derive(Clone, Copy, PartialEq)]
enum Before {
    Start,
    Open,
    Comma,
    Value,
}

impl Before {
    /// Moves past a bracket or comma; `None` where JSON allows none.
    #[inline(always)]
    fn punctuation(&mut self, byte: u8) -> Option<()> {
        *self = match (byte, *self) {
            (b'[', Before::Start | Before::Open | Before::Comma) => Before::Open,
            (b']', Before::Open | Before::Value) => Before::Value,
            (b',', Before::Value) => Before::Comma,
            _ => return None,
        };
        Some(())
    }

    /// Moves past a number; `None` where no value may stand.
    #[inline(always)]
    fn value(&mut self) -> Option<()> {
        if *self == Before::Value {
            return None;
        }
        *self = Before::Value;
        Some(())
    }
}

/// FP32 and FP64 in one pass: each number is read while it is found, by
/// JSON's grammar (the text may not have been checked by a parser).
fn floats<F: Float>(text: &[u8], capacity: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity * std::mem::size_of::<F>());
    let n = text.len();
    let mut i = 0;
    let mut before = Before::Start;
    while i < n {
        let start = i;
        match text[i] {
            b' ' | b'\n' | b'\r' | b'\t' => {
                i += 1;
                continue;
            }
            byte @ (b'[' | b']' | b',') => {
                before.punctuation(byte)?;
                i += 1;
                continue;
            }
            b'-' => i += 1,
            b'0'..=b'9' => {}
            _ => return None,
        }
        before.value()?;
        let first = i;
        let mut m = 0u64;
        let whole = digits(text, &mut i, &mut m);
        // JSON writes no leading zeros (`01`) and no bare sign.
        if whole == 0 || (whole > 1 && text[first] == b'0') {
            return None;
        }
        let mut fraction = 0;
        if text.get(i) == Some(&b'.') {
            i += 1;
            fraction = digits(text, &mut i, &mut m);
            if fraction == 0 {
                return None;
            }
        }
        let exponent = matches!(text.get(i), Some(b'e' | b'E'));
        // At most 19 digits cannot have wrapped the u64.
        let short = (whole + fraction <= 19 && !exponent)
            .then(|| F::from_decimal(m, fraction))
            .flatten();
        let v = if let Some(v) = short {
            if text[start] == b'-' {
                -v
            } else {
                v
            }
        } else {
            if exponent {
                i += 1;
                if matches!(text.get(i), Some(b'+' | b'-')) {
                    i += 1;
                }
                let mut ignored = 0;
                if digits(text, &mut i, &mut ignored) == 0 {
                    return None;
                }
            }
            F::parse(&text[start..i])?
        };
        v.append(&mut out);
    }
    (before == Before::Value).then_some(out)
}

/// Every other datatype: each token found, checked by JSON's grammar,
/// then read.
fn tokens(dtype: DataType, text: &[u8], capacity: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity * dtype.size());
    let n = text.len();
    let mut i = 0;
    let mut before = Before::Start;
    while i < n {
        match text[i] {
            b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            byte @ (b'[' | b']' | b',') => {
                before.punctuation(byte)?;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                before.value()?;
                let start = i;
                i += 1;
                while i < n && matches!(text[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                    i += 1;
                }
                let token = &text[start..i];
                if !json_number(token) {
                    return None;
                }
                push(dtype, token, &mut out)?;
            }
            b't' if dtype == DataType::Bool && text[i..].starts_with(b"true") => {
                before.value()?;
                out.push(1);
                i += 4;
            }
            b'f' if dtype == DataType::Bool && text[i..].starts_with(b"false") => {
                before.value()?;
                out.push(0);
                i += 5;
            }
            _ => return None,
        }
    }
    (before == Before::Value).then_some(out)
}

/// Whether `token` is a JSON number: `-`? (`0` | [1-9][0-9]*)
/// (`.` [0-9]+)? ([eE] [+-]? [0-9]+)?
fn json_number(token: &[u8]) -> bool {
    let digits = |rest: &[u8]| rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut rest = token.strip_prefix(b"-").unwrap_or(token);
    let whole = digits(rest);
    if whole == 0 || (whole > 1 && rest[0] == b'0') {
        return false;
    }
    rest = &rest[whole..];
    if let Some(after) = rest.strip_prefix(b".") {
        let fraction = digits(after);
        if fraction == 0 {
            return false;
        }
        rest = &after[fraction..];
    }
    if let [b'e' | b'E', after @ ..] = rest {
        let after = after
            .strip_prefix(b"+")
            .or_else(|| after.strip_prefix(b"-"))
            .unwrap_or(after);
        let exponent = digits(after);
        if exponent == 0 {
            return false;
        }
        rest = &after[exponent..];
    }
    rest.is_empty()
}

/// Appends one number token as `dtype`; `None` when it is not plainly a
/// value of it.
fn push(dtype: DataType, token: &[u8], out: &mut Vec<u8>) -> Option<()> {
    match dtype {
        DataType::Fp32 => f32::parse(token).map(|v| v.append(out)),
        DataType::Fp64 => f64::parse(token).map(|v| v.append(out)),
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
