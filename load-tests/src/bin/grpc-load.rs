//! `grpc-load`: drives Triton's `ModelInfer` RPC (Gantry's gRPC server, or
//! any KServe v2 / Triton gRPC server) from `--concurrency` callers for
//! `--seconds`, and prints one JSON object in the shape of oha's
//! `--output-format json` (`summary.total`, `statusCodeDistribution`,
//! `errorDistribution`, `latencyPercentiles` in seconds), so `make bench`
//! reads gRPC cells as it reads oha's. oha speaks no gRPC; this is the
//! gRPC side of the same measurement.
//!
//! Every call sends the same inputs in `raw_input_contents` (as
//! `tritonclient.grpc` does) and asks for every output. The callers share
//! one HTTP/2 connection, as a gRPC client's channel does; `--connections`
//! spreads them over more. A call answered OK counts under `"200"`, any
//! other status under its gRPC code name in `errorDistribution`.
//!
//! The calls go out on HTTP/2 streams of the `h2` crate directly, the
//! message encoded once (as oha sends one body from memory): a load
//! generator on the server's cores should spend as little of them as it
//! can. A tonic channel spent more of them per call than oha does (its
//! buffer task, a copy of the request per call, decoding every answer); the
//! first answer is decoded and checked, the rest only by their status and
//! their message's length.
//!
//! ```sh
//! target/release/grpc-load --addr 127.0.0.1:8001 --model unet-seg \
//!     --input image:FP32:1x3x128x128 --concurrency 32 --seconds 10
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use gantry::grpc::proto::model_infer_request::InferInputTensor;
use gantry::grpc::proto::{ModelInferRequest, ModelInferResponse};
use prost::Message;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "grpc-load", about)]
struct Args {
    /// The gRPC server, host:port.
    #[arg(long, default_value = "127.0.0.1:8001")]
    addr: String,
    #[arg(long)]
    model: String,
    /// An input as NAME:DATATYPE:SHAPE (dimensions joined by `x`), filled
    /// with fixed pseudo-random values; repeat for more inputs. FP32 values
    /// are in [0, 1), integer ones in [0, 100).
    #[arg(long = "input", required = true)]
    inputs: Vec<String>,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// HTTP/2 connections the callers are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Runtime threads; 0 is one per core (as oha's runtime has).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if args.threads > 1 {
        builder.worker_threads(args.threads);
    }
    let runtime = builder.enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("grpc-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A fixed pseudo-random sequence (xorshift64*): the same inputs every
/// run, with no dependency for it.
struct Values(u64);

impl Values {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// One `--input`: its tensor description and raw little-endian bytes.
fn parse_input(spec: &str, values: &mut Values) -> Result<(InferInputTensor, Vec<u8>), String> {
    let bad = || format!("--input {spec}: want NAME:DATATYPE:SHAPE, e.g. image:FP32:1x3x128x128");
    let mut parts = spec.splitn(3, ':');
    let (name, datatype, shape) = match (parts.next(), parts.next(), parts.next()) {
        (Some(n), Some(d), Some(s)) if !n.is_empty() => (n, d.to_ascii_uppercase(), s),
        _ => return Err(bad()),
    };
    let shape: Vec<i64> = shape
        .split('x')
        .map(|d| d.parse::<i64>().ok().filter(|d| *d >= 0))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let count = shape.iter().product::<i64>() as usize;
    let mut bytes = Vec::new();
    for _ in 0..count {
        match datatype.as_str() {
            "FP32" => bytes.extend_from_slice(&values.unit().to_le_bytes()),
            "FP64" => bytes.extend_from_slice(&f64::from(values.unit()).to_le_bytes()),
            "INT32" => bytes.extend_from_slice(&((values.next() % 100) as i32).to_le_bytes()),
            "INT64" => bytes.extend_from_slice(&((values.next() % 100) as i64).to_le_bytes()),
            other => {
                return Err(format!(
                    "--input {spec}: {other} is not one of FP32, FP64, INT32, INT64"
                ))
            }
        }
    }
    let tensor = InferInputTensor {
        name: name.to_string(),
        datatype,
        shape,
        parameters: Default::default(),
        contents: None,
    };
    Ok((tensor, bytes))
}

/// The path of Triton's ModelInfer RPC.
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A gRPC message on the wire: uncompressed, its length, its bytes.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// One HTTP/2 connection to `addr`, its driver spawned.
async fn connect(addr: &str) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .handshake(tcp)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("grpc-load: the connection ended: {e}");
        }
    });
    Ok(sender)
}

/// One ModelInfer call: the answer's bytes (kept when `keep`), or the
/// name of the gRPC status (or transport failure) it ended with.
async fn call(
    sender: h2::client::SendRequest<Bytes>,
    message: Bytes,
    keep: bool,
) -> Result<Bytes, String> {
    let transport = |e: h2::Error| format!("transport: {e}");
    let mut sender = sender.ready().await.map_err(transport)?;
    let request = http::Request::post(MODEL_INFER)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, mut stream) = sender.send_request(request, false).map_err(transport)?;
    stream.send_data(message, true).map_err(transport)?;
    let (head, mut body) = response.await.map_err(transport)?.into_parts();
    let mut received = bytes::BytesMut::new();
    let mut length = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(transport)?;
        length += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
        if keep {
            received.extend_from_slice(&chunk);
        }
    }
    let trailers = body.trailers().await.map_err(transport)?;
    // A trailers-only answer carries its status in the headers.
    let status = trailers
        .as_ref()
        .unwrap_or(&head.headers)
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    match status {
        Some(0) if length >= 5 => Ok(received.freeze()),
        Some(0) => Err("an OK answer without a message".into()),
        Some(code) => Err(format!("{:?}", tonic::Code::from_i32(code))),
        None => Err("no grpc-status".into()),
    }
}

/// What one caller saw.
#[derive(Default)]
struct Seen {
    latencies_s: Vec<f64>,
    errors: BTreeMap<String, u64>,
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    let mut values = Values(0x9E37_79B9_7F4A_7C15);
    let (inputs, raw): (Vec<_>, Vec<_>) = args
        .inputs
        .iter()
        .map(|spec| parse_input(spec, &mut values))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    let request = ModelInferRequest {
        model_name: args.model.clone(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    };
    let message = Bytes::from(grpc_frame(&request.encode_to_vec()));
    let mut senders = Vec::new();
    for _ in 0..args.connections.max(1) {
        senders.push(connect(&args.addr).await?);
    }
    // The first answer, decoded: the server answered this model's outputs.
    let first = call(senders[0].clone(), message.clone(), true).await?;
    let answer = ModelInferResponse::decode(first.slice(5..))
        .map_err(|e| format!("the first answer is not a ModelInferResponse: {e}"))?;
    if answer.model_name != args.model || answer.outputs.is_empty() {
        return Err(format!(
            "the first answer holds no outputs of {}: {answer:?}",
            args.model
        ));
    }
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let callers = (0..args.concurrency.max(1)).map(|i| {
        let sender = senders[i % senders.len()].clone();
        let message = message.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            while Instant::now() < until {
                let t = Instant::now();
                match call(sender.clone(), message.clone(), false).await {
                    Ok(_) => seen.latencies_s.push(t.elapsed().as_secs_f64()),
                    Err(code) => *seen.errors.entry(code).or_default() += 1,
                }
            }
            seen
        })
    });
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for seen in futures_util::future::join_all(callers).await {
        let seen = seen.map_err(|e| e.to_string())?;
        latencies.extend(seen.latencies_s);
        for (code, n) in seen.errors {
            *errors.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if latencies.is_empty() {
        return Err(format!("no call succeeded: {errors:?}"));
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            [((p / 100.0 * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    Ok(json!({
        "summary": {
            "total": elapsed,
            "requestsPerSec": latencies.len() as f64 / elapsed,
        },
        "statusCodeDistribution": { "200": latencies.len() },
        "errorDistribution": errors,
        "latencyPercentiles": { "p50": pct(50.0), "p95": pct(95.0), "p99": pct(99.0) },
        "model": args.model,
        "concurrency": args.concurrency,
        "connections": args.connections.max(1),
    }))
}
