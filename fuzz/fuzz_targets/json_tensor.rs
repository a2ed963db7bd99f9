//! The JSON tensor codec (`gantry::codec`): any datatype, any small shape,
//! any `data` value. A tensor it accepts has exactly the bytes its shape
//! needs, and its answer (NaN and infinities included) decodes back to the
//! same values. The text inside a request body, with the inputs' number
//! arrays lifted out (`LiftedBody`), reads back exactly as serde alone
//! reads it, and is refused exactly when serde refuses it.
//!
//! Input: byte 0 picks the datatype, byte 1 the rank (0 to 3), the next
//! `rank` bytes the dimensions (0 to 15); the rest is the JSON text.

#![no_main]

use gantry::codec::{both_ways, tensor_from_json, JsonData};
use gantry_actors::tensor::{element_count, DataType, Tensor};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|input: &[u8]| {
    let [kind, rank, rest @ ..] = input else {
        return;
    };
    let rank = usize::from(rank % 4);
    if rest.len() < rank {
        return;
    }
    let (dims, text) = rest.split_at(rank);
    let shape: Vec<usize> = dims.iter().map(|d| usize::from(d % 16)).collect();
    let dtype = DataType::ALL[usize::from(*kind) % DataType::ALL.len()];
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    lifting_keeps_the_meaning(text);
    // What the request parser hands the codec: one JSON value of any kind.
    let Ok(data) = serde_json::from_str::<Box<RawValue>>(text) else {
        return;
    };
    let Ok(tensor) = tensor_from_json("x", dtype.as_str(), shape.clone(), data.get()) else {
        return;
    };
    assert_eq!(tensor.dtype, dtype);
    assert_eq!(tensor.shape, shape);
    if !dtype.is_variable() {
        assert_eq!(tensor.data.len(), element_count(&shape) * dtype.size());
    }
    assert_eq!(tensor.len(), element_count(&shape));

    let answer = serde_json::to_string(&JsonData(&tensor)).expect("a tensor serializes");
    let raw: Box<RawValue> = serde_json::from_str(&answer).expect("an answer is JSON");
    let again = tensor_from_json("x", dtype.as_str(), shape, raw.get()).expect("an answer decodes");
    same_values(&tensor, &again);
});

/// `text` as an input's data in a v2 body, decoded as FP32 of shape [2]:
/// lifted or not, the same tensors and the same error.
fn lifting_keeps_the_meaning(text: &str) {
    let body = format!(r#"{{"inputs": [{{"data": {text}}}, {{"data": [1, 2]}}]}}"#);
    let (through_lift, alone) = both_ways(&body);
    assert_eq!(through_lift, alone);
}

/// Integers and booleans come back exactly; floats keep NaN, infinities and
/// their value up to the last bit of JSON number parsing.
fn same_values(a: &Tensor, b: &Tensor) {
    match a.dtype {
        DataType::Fp32 => {
            for (x, y) in a.data.chunks_exact(4).zip(b.data.chunks_exact(4)) {
                let x = f32::from_le_bytes(x.try_into().unwrap());
                let y = f32::from_le_bytes(y.try_into().unwrap());
                close(f64::from(x), f64::from(y), f64::from(f32::EPSILON));
            }
        }
        DataType::Fp64 => {
            for (x, y) in a.data.chunks_exact(8).zip(b.data.chunks_exact(8)) {
                let x = f64::from_le_bytes(x.try_into().unwrap());
                let y = f64::from_le_bytes(y.try_into().unwrap());
                close(x, y, 4.0 * f64::EPSILON);
            }
        }
        DataType::Fp16 | DataType::Bf16 => {
            let wide = |t: &Tensor, c: &[u8]| {
                let bits = [c[0], c[1]];
                f64::from(match t.dtype {
                    DataType::Fp16 => half::f16::from_le_bytes(bits).to_f32(),
                    _ => half::bf16::from_le_bytes(bits).to_f32(),
                })
            };
            for (x, y) in a.data.chunks_exact(2).zip(b.data.chunks_exact(2)) {
                close(wide(a, x), wide(b, y), 0.0);
            }
        }
        _ => assert_eq!(a.data, b.data),
    }
}

fn close(x: f64, y: f64, relative: f64) {
    if x.is_nan() || y.is_nan() {
        assert!(x.is_nan() && y.is_nan(), "{x} came back as {y}");
    } else if x.is_infinite() || y.is_infinite() {
        assert_eq!(x, y);
    } else {
        assert!(
            (x - y).abs() <= relative * x.abs().max(f64::MIN_POSITIVE),
            "{x} came back as {y}"
        );
    }
}
