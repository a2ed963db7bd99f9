//! JSON tensors in and out, MB/s of JSON text: Gantry's codec
//! (`gantry::codec`: the wire-speed scanner for number arrays, the writer
//! behind every answer) next to serde_json's default path (`Vec<f32>`
//! from and to text), in the same run, for a 3 x 128 x 128 FP32 image (the
//! UNet's input, values to 4 decimals as clients send them) and a 64-value
//! feature vector (the MLP's), also with 16-17 digits a value as Python
//! writes random floats. The request groups read a whole v2 infer
//! body: the inputs' arrays lifted out before serde (`LiftedBody`, what the
//! server does) next to serde checking them as a `RawValue` first, and
//! serde_json's default path (a struct with a `Vec<f32>`).
//!
//! `cargo bench -p gantry-load-tests --bench json_codec`; figures in
//! load-tests/RESULTS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gantry::codec::{json_array, tensor_from_json, JsonData, LiftedBody};
use gantry_actors::Tensor;
use serde_json::value::RawValue;

/// `n` pseudo-random values in [0, 1) as JSON text: with 4 decimals, or
/// (`full`) as FP64's shortest round-trip text, 16-17 digits, which is
/// what Python's `json.dumps` of `random.random()` values or NumPy's
/// `tolist()` sends.
fn values(n: usize, full: bool) -> (Vec<f32>, String) {
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let wide: Vec<f64> = (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if full {
                (seed >> 11) as f64 / (1u64 << 53) as f64
            } else {
                ((seed >> 11) % 10_000) as f64 / 10_000.0
            }
        })
        .collect();
    let v: Vec<f32> = wide.iter().map(|&x| x as f32).collect();
    let text = if full {
        serde_json::to_string(&wide).unwrap()
    } else {
        serde_json::to_string(&v).unwrap()
    };
    (v, text)
}

/// A v2 infer body as the server reads it.
#[derive(serde::Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    inputs: Vec<Input<'a>>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Input<'a> {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The same body through serde_json's default path.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct VecBody {
    inputs: Vec<VecInput>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct VecInput {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    data: Vec<f32>,
}

fn codec(c: &mut Criterion) {
    for (label, shape, full) in [
        ("3x128x128", vec![1, 3, 128, 128], false),
        ("64", vec![1, 64], false),
        ("64, 17 digits", vec![1, 64], true),
    ] {
        let n: usize = shape.iter().product();
        let (floats, text) = values(n, full);
        let raw: &RawValue = serde_json::from_str(&text).unwrap();

        let mut group = c.benchmark_group(format!("json in, FP32 {label}"));
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function("gantry codec", |b| {
            b.iter(|| tensor_from_json("x", "FP32", shape.clone(), black_box(raw.get())).unwrap())
        });
        group.bench_function("serde_json Vec<f32>", |b| {
            b.iter(|| serde_json::from_str::<Vec<f32>>(black_box(&text)).unwrap())
        });
        group.finish();

        let body = format!(
            r#"{{"inputs": [{{"name": "x", "shape": {shape:?}, "datatype": "FP32", "data": {text}}}]}}"#
        );
        let mut group = c.benchmark_group(format!("json request body in, FP32 {label}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("gantry: data lifted, rest through serde", |b| {
            b.iter(|| {
                let lifted = LiftedBody::new(black_box(body.as_bytes()));
                let parsed: Body = lifted.parse().unwrap();
                let input = &parsed.inputs[0];
                tensor_from_json("x", "FP32", input.shape.clone(), lifted.data(input.data)).unwrap()
            })
        });
        group.bench_function("gantry codec after serde's RawValue check", |b| {
            b.iter(|| {
                let parsed: Body = serde_json::from_str(black_box(&body)).unwrap();
                let input = &parsed.inputs[0];
                tensor_from_json("x", "FP32", input.shape.clone(), input.data.get()).unwrap()
            })
        });
        group.bench_function("serde_json Vec<f32>", |b| {
            b.iter(|| serde_json::from_str::<VecBody>(black_box(&body)).unwrap())
        });
        group.finish();

        let tensor = Tensor::from_f32(shape.clone(), &floats).unwrap();
        let written = serde_json::to_vec(&JsonData(&tensor)).unwrap();
        let mut group = c.benchmark_group(format!("json out, FP32 {label}"));
        group.throughput(Throughput::Bytes(written.len() as u64));
        group.bench_function("gantry codec JsonData (serde, per-file answers)", |b| {
            b.iter(|| serde_json::to_vec(&JsonData(black_box(&tensor))).unwrap())
        });
        group.bench_function("gantry codec json_array (v2 and REST answers)", |b| {
            b.iter(|| {
                let mut out = Vec::new();
                json_array(black_box(&tensor), &mut out).unwrap();
                out
            })
        });
        group.bench_function("serde_json Vec<f32>", |b| {
            b.iter(|| serde_json::to_vec(black_box(&floats)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
