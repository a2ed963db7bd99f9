//! `slo-load`: offered load against a latency target, for `make bench-slo`.
//!
//! Two modes on the same client:
//! - **closed loop** (`--concurrency N`): N callers each send, wait for the
//!   answer and send again: what the server completes per second is its
//!   capacity;
//! - **open loop** (`--rate R`): arrivals at R a second (Poisson by
//!   default, `--arrivals uniform` for a fixed gap), sent whether or not
//!   earlier ones were answered, and each latency counted from the
//!   arrival's scheduled time (so a generator or server that falls behind
//!   shows in the latencies instead of hiding them: no coordinated
//!   omission). oha's `-q` cannot split latencies by status, and goodput
//!   needs exactly that.
//!
//! It prints one JSON object: answers by status, successes within
//! `--target-ms` (goodput: per second of the run; attainment: their share
//! of the successes), latency percentiles of the successes and of the
//! other answers (a refusal should come at once), and how late the
//! generator itself sent (its lag: on shared cores it can fall behind).
//! Arrivals past `--max-inflight` unanswered requests are not sent and are
//! counted as `not_sent`.
//!
//! ```sh
//! target/release/slo-load --url http://127.0.0.1:8000/v2/models/mlp/infer \
//!     --body mlp.json --rate 4000 --seconds 10 --target-ms 50
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "slo-load", about)]
struct Args {
    /// Where each request is POSTed.
    #[arg(long)]
    url: String,
    /// The request body (sent as is).
    #[arg(long)]
    body: std::path::PathBuf,
    /// Extra request headers, NAME:VALUE; repeat for more.
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// Closed loop: this many callers.
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop: arrivals per second.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    arrivals: Arrivals,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The latency target the answers are judged against, ms.
    #[arg(long, default_value_t = 50.0)]
    target_ms: f64,
    /// Open loop: unanswered requests at most; arrivals beyond are not sent.
    #[arg(long, default_value_t = 4096)]
    max_inflight: usize,
    /// Seed of the arrival times.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Arrivals {
    Poisson,
    Uniform,
}

/// One answer: its status (0: no answer, the connection failed), its
/// latency from the scheduled arrival and how late it was sent.
struct Answer {
    status: u16,
    latency: Duration,
    lag: Duration,
}

/// What every request shares.
struct Target {
    client: reqwest::Client,
    url: String,
    body: Bytes,
    headers: reqwest::header::HeaderMap,
}

impl Target {
    async fn send(&self, scheduled: Instant) -> Answer {
        let lag = Instant::now().saturating_duration_since(scheduled);
        let sent = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(self.body.clone())
            .send()
            .await;
        let status = match sent {
            // The whole answer, not just its head.
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(_) => status,
                    Err(_) => 0,
                }
            }
            Err(_) => 0,
        };
        Answer {
            status,
            latency: scheduled.elapsed(),
            lag,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread: it sends tens of thousands of small requests a second,
    // and slo.sh gives it one core of its own (or shares them all).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slo-load: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    let body = std::fs::read(&args.body).map_err(|e| format!("{}: {e}", args.body.display()))?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        args.content_type.parse().map_err(|_| "bad content type")?,
    );
    // Answers as they are: a compressed one would measure the compressor.
    headers.insert(
        reqwest::header::ACCEPT_ENCODING,
        reqwest::header::HeaderValue::from_static("identity"),
    );
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header {header}: want NAME:VALUE"))?;
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| format!("--header {header}: {e}"))?,
            value
                .trim()
                .parse()
                .map_err(|_| format!("--header {header}: bad value"))?,
        );
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        // Below the server's keep-alive (Gantry's `server.keep_alive_s`
        // is 5 by default): a connection the server may be closing as idle
        // is never reused, which would reset it under a request (open loop
        // at 4x capacity holds thousands of connections, some idle that long).
        .pool_idle_timeout(Duration::from_secs(4))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let target = Arc::new(Target {
        client,
        url: args.url.clone(),
        body: Bytes::from(body),
        headers,
    });
    let duration = Duration::from_secs_f64(args.seconds);
    let (answers, not_sent, mode) = match (args.concurrency, args.rate) {
        (Some(callers), None) => (
            closed_loop(&target, callers.max(1), duration).await,
            0,
            json!({"closed_loop": {"concurrency": callers}}),
        ),
        (None, Some(rate)) if rate > 0.0 => {
            let (answers, not_sent) = open_loop(&target, &args, rate, duration).await;
            let arrivals = format!("{:?}", args.arrivals).to_lowercase();
            (
                answers,
                not_sent,
                json!({"open_loop": {"rate_per_s": rate, "arrivals": arrivals}}),
            )
        }
        _ => return Err("give --concurrency N or --rate R (> 0)".into()),
    };
    Ok(report(&answers, not_sent, mode, &args))
}

/// `callers` callers, each sending as soon as its last answer came.
async fn closed_loop(target: &Arc<Target>, callers: usize, duration: Duration) -> Vec<Answer> {
    let end = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let target = target.clone();
        tasks.spawn(async move {
            let mut answers = Vec::new();
            while Instant::now() < end {
                answers.push(target.send(Instant::now()).await);
            }
            answers
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("a caller panicked"));
    }
    all
}

/// Arrivals at `rate` a second for `duration`, each sent at its time
/// whatever earlier ones are doing; returns the answers and the arrivals
/// not sent because `--max-inflight` were unanswered.
async fn open_loop(
    target: &Arc<Target>,
    args: &Args,
    rate: f64,
    duration: Duration,
) -> (Vec<Answer>, u64) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let inflight = Arc::new(AtomicUsize::new(0));
    let mut gaps = Gaps::new(args.seed, rate, args.arrivals);
    let start = Instant::now();
    let end = start + duration;
    let mut next = start;
    let mut not_sent = 0u64;
    while next < end {
        tokio::time::sleep_until(next).await;
        // Every arrival due by now leaves now, at its own scheduled time.
        let now = Instant::now();
        while next <= now && next < end {
            if inflight.load(Ordering::Relaxed) >= args.max_inflight {
                not_sent += 1;
            } else {
                inflight.fetch_add(1, Ordering::Relaxed);
                let (target, tx, inflight) = (target.clone(), tx.clone(), inflight.clone());
                let scheduled = next;
                tokio::spawn(async move {
                    let answer = target.send(scheduled).await;
                    inflight.fetch_sub(1, Ordering::Relaxed);
                    let _ = tx.send(answer);
                });
            }
            next += gaps.next();
        }
    }
    drop(tx);
    let mut answers = Vec::new();
    while let Some(answer) = rx.recv().await {
        answers.push(answer);
    }
    (answers, not_sent)
}

/// Gaps between arrivals: exponential (Poisson arrivals) or fixed, from
/// a fixed pseudo-random sequence (splitmix64: the same arrivals every
/// run for a seed, with no dependency for it).
struct Gaps {
    state: u64,
    mean_s: f64,
    arrivals: Arrivals,
}

impl Gaps {
    fn new(seed: u64, rate: f64, arrivals: Arrivals) -> Gaps {
        Gaps {
            state: seed,
            mean_s: 1.0 / rate,
            arrivals,
        }
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> Duration {
        let gap = match self.arrivals {
            Arrivals::Uniform => self.mean_s,
            Arrivals::Poisson => -self.uniform().ln() * self.mean_s,
        };
        Duration::from_secs_f64(gap)
    }
}

/// The `q` quantile of sorted `values`, ms (nearest rank); `null` if none.
fn quantile(sorted: &[Duration], q: f64) -> serde_json::Value {
    if sorted.is_empty() {
        return serde_json::Value::Null;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    let ms = sorted[rank - 1].as_secs_f64() * 1000.0;
    json!((ms * 1000.0).round() / 1000.0)
}

fn report(
    answers: &[Answer],
    not_sent: u64,
    mode: serde_json::Value,
    args: &Args,
) -> serde_json::Value {
    let target = Duration::from_secs_f64(args.target_ms / 1000.0);
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = Vec::new();
    let mut other = Vec::new();
    let mut lags: Vec<Duration> = answers.iter().map(|a| a.lag).collect();
    for a in answers {
        let key = if a.status == 0 {
            "no_answer".to_string()
        } else {
            a.status.to_string()
        };
        *statuses.entry(key).or_default() += 1;
        if a.status == 200 {
            ok.push(a.latency);
        } else {
            other.push(a.latency);
        }
    }
    ok.sort_unstable();
    other.sort_unstable();
    lags.sort_unstable();
    let within = ok.iter().filter(|l| **l <= target).count();
    let per_s = |n: usize| (n as f64 / args.seconds * 10.0).round() / 10.0;
    json!({
        "mode": mode,
        "seconds": args.seconds,
        "target_ms": args.target_ms,
        "sent": answers.len(),
        "not_sent": not_sent,
        "statuses": statuses,
        "ok_per_s": per_s(ok.len()),
        "within_target": within,
        "goodput_per_s": per_s(within),
        "attainment": if ok.is_empty() { serde_json::Value::Null } else {
            json!((within as f64 / ok.len() as f64 * 1e4).round() / 1e4)
        },
        "ok_ms": {"p50": quantile(&ok, 0.50), "p99": quantile(&ok, 0.99), "max": quantile(&ok, 1.0)},
        "other_ms": {"p50": quantile(&other, 0.50), "p99": quantile(&other, 0.99)},
        "send_lag_ms": {"p99": quantile(&lags, 0.99), "max": quantile(&lags, 1.0)},
    })
}
