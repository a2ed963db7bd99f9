//! `media-bench`: what preparing an upload costs next to what inference
//! costs. For each image and audio file it times Gantry's own decode +
//! resize (or decode + resample) path, single-threaded, exactly as a
//! request runs it on the media pool; then it times ONNX Runtime on the
//! model the file is for (one intra-op thread, batch 1 and batch 8).
//! Prints a Markdown table of medians.
//!
//! ```sh
//! cargo run --release -p gantry-load-tests --bin media-bench -- --iterations 50
//! ```
//!
//! Besides the fixtures in `tests/fixtures/media/` (192x160 images, 1 s
//! clips) it times two camera-sized images made in memory: a 3000x2000
//! colour JPEG and the same as PNG.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use gantry::media::audio::audio_to_tensor;
use gantry::media::image::{image_to_tensor, ImageLimits};
use gantry::media::sniff::sniff;
use gantry_actors::engine::onnx::{init_runtime, OnnxFactory};
use gantry_actors::engine::{EngineFactory, LoadTarget};
use gantry_actors::processing::InputProcessing;
use gantry_actors::repository::{scan_one, ModelSpec};
use gantry_actors::Tensor;

#[derive(Parser, Debug)]
#[command(name = "media-bench", about)]
struct Args {
    /// Timed runs per case (after two warmup runs); the median is reported.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// The folder holding the media fixtures.
    #[arg(long, default_value = "tests/fixtures/media")]
    fixtures: PathBuf,
    /// The model repository holding `spheroid-seg` and `night-calls`.
    #[arg(long, default_value = "models")]
    models: PathBuf,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("media-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    init_runtime(
        &gantry::runtime::locate_onnxruntime("").map_err(|e| e.to_string())?,
        Default::default(),
    )?;
    let seg = model(&args.models, "spheroid-seg")?;
    let calls = model(&args.models, "night-calls")?;
    let read =
        |name: &str| std::fs::read(args.fixtures.join(name)).map_err(|e| format!("{name}: {e}"));

    println!("| File | Size | Prepare p50 (ms) | Model | Inference p50, batch 1 (ms/item) | Inference p50, batch 8 (ms/item) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let seg_infer = inference(&seg, args.iterations)?;
    let mut images: Vec<(String, Vec<u8>)> = [
        "spheroids.png",
        "spheroids.tiff",
        "spheroids.jpg",
        "spheroids.webp",
    ]
    .iter()
    .map(|name| Ok((name.to_string(), read(name)?)))
    .collect::<Result<_, String>>()?;
    images.extend(camera_images());
    for (name, bytes) in &images {
        let (prepare, size) = prepare_image(&seg, bytes, args.iterations)?;
        row(name, &size, prepare, &seg, seg_infer);
    }
    let calls_infer = inference(&calls, args.iterations)?;
    for name in [
        "call-owl-hoot.wav",
        "call-cricket-trill-f32.wav",
        "call-bird-chirp-44k-stereo.wav",
        "call-owl-hoot.flac",
        "call-owl-hoot.mp3",
    ] {
        let bytes = Bytes::from(read(name)?);
        let (prepare, size) = prepare_audio(&calls, &bytes, args.iterations)?;
        row(name, &size, prepare, &calls, calls_infer);
    }
    Ok(())
}

fn row(name: &str, size: &str, prepare: f64, model: &ModelSpec, (one, eight): (f64, f64)) {
    println!(
        "| {name} | {size} | {prepare:.3} | {} | {one:.3} | {eight:.3} |",
        model.name
    );
}

fn model(dir: &Path, name: &str) -> Result<ModelSpec, String> {
    scan_one(dir, name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no model '{name}' in {}", dir.display()))
}

/// The median of `runs` timed calls of `f`, in milliseconds, after two warmups.
fn median_ms(runs: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    f()?;
    f()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn prepare_image(model: &ModelSpec, bytes: &[u8], runs: usize) -> Result<(f64, String), String> {
    let InputProcessing::Image(spec) = &model.settings.input else {
        return Err(format!("{} does not take images", model.name));
    };
    let file_type = sniff(bytes).ok_or("unknown file type")?;
    let target = (spec.width.unwrap_or(128), spec.height.unwrap_or(128));
    let limits = ImageLimits {
        max_pixels: 100_000_000,
        ..ImageLimits::default()
    };
    let mut size = String::new();
    let ms = median_ms(runs, || {
        let t =
            image_to_tensor(bytes, file_type, spec, target, limits).map_err(|e| e.to_string())?;
        size = format!("{}x{} {}", t.width, t.height, file_type.name());
        Ok(())
    })?;
    Ok((ms, size))
}

fn prepare_audio(model: &ModelSpec, bytes: &Bytes, runs: usize) -> Result<(f64, String), String> {
    let InputProcessing::Audio(spec) = &model.settings.input else {
        return Err(format!("{} does not take audio", model.name));
    };
    let file_type = sniff(bytes).ok_or("unknown file type")?;
    let mut size = String::new();
    let ms = median_ms(runs, || {
        let t = audio_to_tensor(bytes.clone(), file_type, spec, 2).map_err(|e| e.to_string())?;
        size = format!(
            "{:.1} s, {} Hz x{} {}",
            t.seconds,
            t.sample_rate,
            t.channels,
            file_type.name()
        );
        Ok(())
    })?;
    Ok((ms, size))
}

/// Median inference time per item at batch 1 and batch 8 (one thread).
fn inference(model: &ModelSpec, runs: usize) -> Result<(f64, f64), String> {
    let factory = OnnxFactory {
        path: model.onnx_path.clone(),
        label: model.file_label(),
        sha256: String::new(),
        intra_op_threads: Some(1),
        warmup_samples: Vec::new(),
        optional_inputs: Vec::new(),
    };
    let mut engine = factory
        .load(&LoadTarget::cpu())
        .map_err(|e| e.to_string())?;
    let spec = engine.signature().inputs[0].clone();
    let mut per_item = [0.0; 2];
    for (slot, batch) in [1usize, 8].into_iter().enumerate() {
        let shape: Vec<usize> = spec
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| if i == 0 { batch } else { d.unwrap_or(1) })
            .collect();
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let input = [Tensor::from_f32(shape, &values).map_err(|e| format!("{e:?}"))?];
        let ms = median_ms(runs, || {
            engine.infer(&input).map(drop).map_err(|e| e.to_string())
        })?;
        per_item[slot] = ms / batch as f64;
    }
    Ok((per_item[0], per_item[1]))
}

/// A 3000x2000 colour image (gradients and texture) as JPEG and as PNG.
fn camera_images() -> Vec<(String, Vec<u8>)> {
    let photo = image::RgbImage::from_fn(3000, 2000, |x, y| {
        let t = ((x * 31 + y * 17) % 97) as u8;
        image::Rgb([
            (x / 12) as u8 ^ t,
            (y / 8) as u8,
            ((x + y) / 20) as u8 ^ (t / 2),
        ])
    });
    let encode = |format| {
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(photo.clone())
            .write_to(&mut out, format)
            .expect("encode");
        out.into_inner()
    };
    vec![
        (
            "camera (generated)".to_string(),
            encode(image::ImageFormat::Jpeg),
        ),
        (
            "camera (generated)".to_string(),
            encode(image::ImageFormat::Png),
        ),
    ]
}
