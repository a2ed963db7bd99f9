//! JSON tensors in and out, MB/s of JSON text: Gantry's codec
//! (`gantry::codec`: the wire-speed scanner for number arrays, the writer
//! behind every answer) next to serde_json's default path (`Vec<f32>`
//! from and to text), in the same run, for a 3 x 128 x 128 FP32 image (the
//! UNet's input, values to 4 decimals as clients send them) and a 64-value
//! feature vector (the MLP's).
//!
//! `cargo bench -p gantry-load-tests --bench json_codec`; figures in
//! load-tests/RESULTS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gantry::codec::{json_array, tensor_from_json, JsonData};
use gantry_actors::Tensor;
use serde_json::value::RawValue;

/// `n` pseudo-random values in [0, 1) with 4 decimals, as JSON text.
fn values(n: usize) -> (Vec<f32>, String) {
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 11) % 10_000) as f32 / 10_000.0
        })
        .collect();
    let text = serde_json::to_string(&v).unwrap();
    (v, text)
}

fn codec(c: &mut Criterion) {
    for (label, shape) in [("3x128x128", vec![1, 3, 128, 128]), ("64", vec![1, 64])] {
        let n: usize = shape.iter().product();
        let (floats, text) = values(n);
        let raw: &RawValue = serde_json::from_str(&text).unwrap();

        let mut group = c.benchmark_group(format!("json in, FP32 {label}"));
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function("gantry codec", |b| {
            b.iter(|| tensor_from_json("x", "FP32", shape.clone(), black_box(raw)).unwrap())
        });
        // What a request pays: serde_json finds the `data` array's end
        // (checking it) before the scanner reads it.
        group.bench_function("gantry codec + RawValue", |b| {
            b.iter(|| {
                let raw: &RawValue = serde_json::from_str(black_box(&text)).unwrap();
                tensor_from_json("x", "FP32", shape.clone(), raw).unwrap()
            })
        });
        group.bench_function("serde_json Vec<f32>", |b| {
            b.iter(|| serde_json::from_str::<Vec<f32>>(black_box(&text)).unwrap())
        });
        group.finish();

        let tensor = Tensor::from_f32(shape.clone(), &floats).unwrap();
        let written = serde_json::to_vec(&JsonData(&tensor)).unwrap();
        let mut group = c.benchmark_group(format!("json out, FP32 {label}"));
        group.throughput(Throughput::Bytes(written.len() as u64));
        group.bench_function("gantry codec JsonData (serde, REST answers)", |b| {
            b.iter(|| serde_json::to_vec(&JsonData(black_box(&tensor))).unwrap())
        });
        group.bench_function("gantry codec json_array (v2 answers)", |b| {
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
