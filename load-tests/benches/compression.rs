//! Compressing an answer as a client that sends `Accept-Encoding: gzip`
//! gets it: the UNet's mask (1 x 1 x 128 x 128 FP32) as the JSON text the
//! server writes, deflated at the fast level the server uses, by `flate2`
//! on its zlib-rs backend (what Gantry builds with) next to miniz_oxide
//! (flate2's default backend), in the same run. MB/s of JSON text in.
//!
//! `cargo bench -p gantry-load-tests --bench compression`; figures in
//! load-tests/MICRO_RESULTS.md.

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flate2::write::DeflateEncoder;
use flate2::Compression;
use gantry::codec::json_array;
use gantry_actors::Tensor;

/// A sigmoid mask's worth of values in (0, 1), as the answer's JSON array.
fn mask_json() -> Vec<u8> {
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let values: Vec<f32> = (0..128 * 128)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let x = ((seed >> 11) as f64 / (1u64 << 53) as f64) * 12.0 - 6.0;
            (1.0 / (1.0 + (-x).exp())) as f32
        })
        .collect();
    let tensor = Tensor::from_f32(vec![1, 1, 128, 128], &values).unwrap();
    let mut text = Vec::new();
    json_array(&tensor, &mut text).unwrap();
    text
}

fn compression(c: &mut Criterion) {
    let text = mask_json();
    let mut group = c.benchmark_group("deflate an answer, 1x1x128x128 FP32 as JSON");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("flate2 on zlib-rs, fast", |b| {
        b.iter(|| {
            let mut encoder = DeflateEncoder::new(Vec::new(), Compression::fast());
            encoder.write_all(black_box(&text)).unwrap();
            encoder.finish().unwrap()
        })
    });
    group.bench_function("miniz_oxide, level 1", |b| {
        b.iter(|| miniz_oxide::deflate::compress_to_vec(black_box(&text), 1))
    });
    group.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
