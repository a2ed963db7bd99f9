//! `upload-load`: drives `POST /api/optimized/predict` with one file
//! uploaded as multipart, from `--concurrency` clients for `--seconds`, and
//! prints one JSON object: requests/s, latency percentiles, errors, and
//! what the answers say about batching and where the time went (mean
//! batch size, decode, queue and inference milliseconds).
//!
//! ```sh
//! target/release/upload-load --url http://127.0.0.1:8080 --model spheroid-seg \
//!     --file tests/fixtures/media/spheroids.png --concurrency 8 --seconds 5
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(name = "upload-load", about)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long)]
    model: String,
    /// The file every request uploads.
    #[arg(long)]
    file: PathBuf,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    latencies_ms: Vec<f64>,
    errors: usize,
    batch_sizes: Vec<f64>,
    decode_ms: Vec<f64>,
    queue_ms: Vec<f64>,
    inference_ms: Vec<f64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upload-load: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<Value, String> {
    let bytes = std::fs::read(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let name = args
        .file
        .file_name()
        .map_or("file".into(), |n| n.to_string_lossy().into_owned());
    let client = reqwest::Client::new();
    let url = format!("{}/api/optimized/predict", args.url.trim_end_matches('/'));
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let clients = (0..args.concurrency.max(1)).map(|_| {
        let (client, url, bytes, name, model) = (
            client.clone(),
            url.clone(),
            bytes.clone(),
            name.clone(),
            args.model.clone(),
        );
        tokio::spawn(async move {
            let mut seen = Seen::default();
            while Instant::now() < until {
                let form = reqwest::multipart::Form::new()
                    .text("model", model.clone())
                    .text("cache", "false")
                    .part(
                        "file",
                        reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone()),
                    );
                let t = Instant::now();
                let answer = match client.post(&url).multipart(form).send().await {
                    Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                    _ => None,
                };
                let Some(answer) = answer else {
                    seen.errors += 1;
                    continue;
                };
                seen.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
                let number = |v: &Value| v.as_f64().unwrap_or(0.0);
                seen.batch_sizes.push(number(&answer["batch_size"]));
                seen.decode_ms.push(number(&answer["timings_ms"]["decode"]));
                seen.queue_ms.push(number(&answer["timings_ms"]["queue"]));
                seen.inference_ms
                    .push(number(&answer["timings_ms"]["inference"]));
            }
            seen
        })
    });
    let mut all = Seen::default();
    for seen in futures_util::future::join_all(clients).await {
        let seen = seen.map_err(|e| e.to_string())?;
        all.latencies_ms.extend(seen.latencies_ms);
        all.errors += seen.errors;
        all.batch_sizes.extend(seen.batch_sizes);
        all.decode_ms.extend(seen.decode_ms);
        all.queue_ms.extend(seen.queue_ms);
        all.inference_ms.extend(seen.inference_ms);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if all.latencies_ms.is_empty() {
        return Err(format!("no request succeeded ({} errors)", all.errors));
    }
    all.latencies_ms.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let pct = |p: f64| {
        all.latencies_ms[((p / 100.0 * all.latencies_ms.len() as f64).ceil() as usize)
            .clamp(1, all.latencies_ms.len())
            - 1]
    };
    Ok(serde_json::json!({
        "model": args.model,
        "file": name,
        "concurrency": args.concurrency,
        "requests": all.latencies_ms.len(),
        "errors": all.errors,
        "requests_per_s": all.latencies_ms.len() as f64 / elapsed,
        "p50_ms": pct(50.0),
        "p95_ms": pct(95.0),
        "p99_ms": pct(99.0),
        "mean_batch_size": mean(&all.batch_sizes),
        "mean_decode_ms": mean(&all.decode_ms),
        "mean_queue_ms": mean(&all.queue_ms),
        "mean_inference_ms": mean(&all.inference_ms),
    }))
}
