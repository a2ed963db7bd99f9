//! `raw-onnx`: ONNX Runtime's own throughput on one model, without HTTP,
//! batching or queues: the machine's limit that `make bench` compares Gantry
//! with.
//!
//! It opens the model through Gantry's engine (`OnnxFactory`, the same
//! session options a replica uses) with the given intra-op thread count,
//! builds fixed pseudo-random inputs from the engine's signature with the
//! leading (batch) dimension set to `--batch`, warms up, then runs inference
//! back to back for `--seconds` and prints one JSON object: items/s,
//! inferences/s and per-inference p50/p95/p99 in milliseconds.
//!
//! ```sh
//! cargo run --release -p gantry-load-tests --bin raw-onnx -- \
//!     --model models/unet-seg/model.onnx --batch 8 --seconds 5
//! ```
//!
//! The library is found as the server finds it by default: `ORT_DYLIB_PATH`,
//! else `.onnxruntime/libonnxruntime.so` (`make onnxruntime`) in the working
//! directory or above the binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use gantry_actors::device::Device;
use gantry_actors::engine::onnx::{init_runtime, OnnxFactory, RuntimeThreads};
use gantry_actors::engine::{Engine, EngineFactory, LoadTarget};
use gantry_actors::signature::TensorSpec;
use gantry_actors::{DataType, Tensor};

/// Measures raw ONNX Runtime throughput of one model.
#[derive(Parser, Debug)]
#[command(name = "raw-onnx", about)]
struct Args {
    /// The `.onnx` file.
    #[arg(long)]
    model: PathBuf,
    /// ONNX Runtime's shared intra-op pool, as the server sets it up
    /// (`runtime.intra_op_threads`): 0 means the cores available.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Let the pool's idle threads spin (`runtime.spinning`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    spinning: bool,
    /// Items per inference: the leading dimension of every input.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How long to measure, after warmup, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Run on this GPU through the CUDA execution provider (needs the GPU
    /// build of ONNX Runtime, `make onnxruntime-gpu`); the CPU when absent.
    #[arg(long)]
    gpu: Option<u32>,
}

/// Warmup: at least this many runs, and at least this long.
const WARMUP_RUNS: usize = 5;
const WARMUP: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raw-onnx: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<serde_json::Value, String> {
    if args.batch == 0 || args.seconds <= 0.0 {
        return Err("--batch and --seconds must be positive".into());
    }
    let threads = RuntimeThreads {
        intra_op: args.threads,
        spinning: args.spinning,
        // One session alone: the gate (as a replica has it) is never waited on.
        ..RuntimeThreads::default()
    };
    init_runtime(&onnxruntime()?, threads)?;
    let factory = OnnxFactory {
        path: args.model.clone(),
        label: args.model.display().to_string(),
        sha256: String::new(),
        intra_op_threads: None,
        warmup_samples: Vec::new(),
        optional_inputs: Vec::new(),
    };
    let target = match args.gpu {
        Some(index) => LoadTarget {
            device: Device::Gpu(index),
            memory_mb: 0,
            map_weights: false,
        },
        None => LoadTarget::cpu(),
    };
    let mut engine = factory.load(&target).map_err(|e| e.to_string())?;
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let inputs = engine
        .signature()
        .inputs
        .iter()
        .map(|spec| input(spec, args.batch, &mut seed))
        .collect::<Result<Vec<_>, _>>()?;

    let started = Instant::now();
    for run in 0.. {
        if run >= WARMUP_RUNS && started.elapsed() >= WARMUP {
            break;
        }
        infer(engine.as_mut(), &inputs)?;
    }

    let budget = Duration::from_secs_f64(args.seconds);
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < budget {
        let t = Instant::now();
        infer(engine.as_mut(), &inputs)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let runs = times.len() as f64;
    Ok(serde_json::json!({
        "model": args.model.display().to_string(),
        "device": target.device.to_string(),
        "threads": args.threads,
        "batch": args.batch,
        "inferences": times.len(),
        "seconds": elapsed,
        "items_per_s": runs * args.batch as f64 / elapsed,
        "inferences_per_s": runs / elapsed,
        "mean_ms": times.iter().sum::<f64>() / runs,
        "p50_ms": percentile(&times, 50.0),
        "p95_ms": percentile(&times, 95.0),
        "p99_ms": percentile(&times, 99.0),
    }))
}

fn infer(engine: &mut dyn Engine, inputs: &[Tensor]) -> Result<(), String> {
    engine.infer(inputs).map(drop).map_err(|e| e.to_string())
}

/// A tensor for `spec`: the leading dimension is `batch`, FP32 values are
/// pseudo-random in [0, 1), other datatypes are zeros.
fn input(spec: &TensorSpec, batch: usize, seed: &mut u64) -> Result<Tensor, String> {
    let shape = spec
        .dims
        .iter()
        .enumerate()
        .map(|(i, d)| match (i, d) {
            (0, _) => Ok(batch),
            (_, Some(n)) => Ok(*n),
            (_, None) => Err(format!(
                "input '{}' has a dynamic dimension {i} besides the batch dimension",
                spec.name
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if spec.dtype != DataType::Fp32 {
        return Ok(Tensor::zeros(spec.dtype, shape));
    }
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            // xorshift64: fixed, cheap and good enough for input noise.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Tensor::from_f32(shape, &values).map_err(|e| e.to_string())
}

/// `ORT_DYLIB_PATH`, else `.onnxruntime/libonnxruntime.so` in the working
/// directory or one of the binary's ancestors (as `gantry::runtime` does).
fn onnxruntime() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(path));
    }
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let ancestors = exe.iter().flat_map(|e| e.ancestors().skip(1).take(4));
    cwd.iter()
        .map(PathBuf::as_path)
        .chain(ancestors)
        .map(|dir: &Path| dir.join(".onnxruntime/libonnxruntime.so"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "ONNX Runtime not found: run `make onnxruntime` or set ORT_DYLIB_PATH".to_string()
        })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
