//! What SREs read: `/metrics` parses with a real Prometheus parser and its
//! counters move as requests are served, agreeing with `/api/optimized/stats`;
//! and one request can be followed through the JSON logs from the handler,
//! through the batcher, to the replica thread.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::binary::Gantry;
use crate::common::{tensor, Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::{json, Value};

/// The Python interpreter that has the test clients (`make venv`).
fn python() -> String {
    std::env::var("GANTRY_TEST_PYTHON")
        .ok()
        .or_else(|| {
            let venv = crate::common::root().join(".venv/bin/python");
            venv.exists().then(|| venv.display().to_string())
        })
        .expect("the Python test clients are missing: run `make venv`")
}

/// Scrapes `/metrics` and parses it with prometheus_client's OpenMetrics parser.
async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let r = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let page = r.text().await.unwrap();
    let script = crate::common::root().join("tests/clients/parse_metrics.py");
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        (child.wait_with_output().unwrap(), page)
    })
    .await
    .unwrap();
    let (output, page) = output;
    assert!(
        output.status.success(),
        "the page does not parse: {}\n{page}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic_and_agree_with_stats() {
    let repo = Repo::new().fake(
        "m",
        "replicas = 2\nmax_batch_size = 4\nbatch_window_ms = 5\nqueue_capacity = 70\n",
    );
    let provider = Arc::new(FakeProvider::new(FakeEngineFactory::vector(4)));
    let server = TestServer::ready(crate::common::config(repo.path()), provider).await;
    let before = scrape(&server).await;
    assert_eq!(
        value(
            &before,
            "gantry_replica_state{model=m,replica=0,state=ready}"
        ),
        1.0
    );
    assert_eq!(
        value(&before, "gantry_memory_budget_total_bytes{device=cpu}"),
        8192.0 * 1024.0 * 1024.0
    );

    let ok = |v: i32| json!({"model": "m", "inputs": {"x": tensor(&[1, 4], "FP32", json!([v, 0, 0, 0]))}});
    for v in 0..3 {
        let (status, _) = server.post("/api/optimized/predict", &ok(v)).await;
        assert_eq!(status, 200);
    }
    let (_, hit) = server.post("/api/optimized/predict", &ok(0)).await;
    assert_eq!(hit["cache"], "l1");
    let bad = json!({"model": "m", "inputs": {"x": tensor(&[1, 3], "FP32", json!([1, 2, 3]))}});
    let (status, _) = server.post("/api/optimized/predict", &bad).await;
    assert_eq!(status, 422);
    let (status, _) = server
        .post(
            "/api/optimized/predict",
            &json!({"model": "nope", "inputs": {}}),
        )
        .await;
    assert_eq!(status, 404);

    // A batch is observed on the replica thread just after its answers go
    // out, so the last one may land a moment after its client returned.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let page = scrape(&server).await;
        let batches = value(&page, "gantry_batch_size_count{model=m}")
            - value(&before, "gantry_batch_size_count{model=m}");
        if batches >= 3.0 || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let moved = |key: &str| value(&after, key) - value(&before, key);
    assert_eq!(moved("gantry_requests_total{model=m,status=200}"), 4.0);
    assert_eq!(moved("gantry_requests_total{model=m,status=422}"), 1.0);
    assert_eq!(
        moved("gantry_requests_total{model=_unknown,status=404}"),
        1.0
    );
    assert_eq!(moved("gantry_request_duration_seconds_count{model=m}"), 5.0);
    assert_eq!(
        moved("gantry_queue_duration_seconds_count{model=m}"),
        3.0,
        "cache hits never queue"
    );
    assert_eq!(moved("gantry_batch_size_count{model=m}"), 3.0);
    assert_eq!(
        moved("gantry_inference_duration_seconds_count{model=m}"),
        3.0
    );
    assert_eq!(moved("gantry_cache_hits_total{level=l1}"), 1.0);
    assert_eq!(moved("gantry_cache_misses_total{level=l1}"), 4.0);
    assert_eq!(value(&after, "gantry_queue_depth{model=m}"), 0.0);
    assert_eq!(value(&after, "gantry_queue_capacity{model=m}"), 70.0);

    // Stats tell the same story.
    let stats = server.stats().await;
    let batcher = &stats["model_pools"]["m"]["batcher"];
    assert_eq!(
        batcher["batches"].as_f64().unwrap(),
        value(&after, "gantry_batch_size_count{model=m}")
    );
    assert_eq!(
        batcher["items"].as_f64().unwrap(),
        value(&after, "gantry_batch_size_sum{model=m}")
    );
    assert_eq!(batcher["batch_fill"], json!({"1": 3}));
    let perf = &stats["performance_metrics"]["models"]["m"];
    assert_eq!(
        (perf["requests"].as_u64(), perf["errors"].as_u64()),
        (Some(5), Some(1))
    );
    assert!((perf["error_rate"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    assert!(perf["request_rate_per_s"].as_f64().unwrap() > 0.0);
    let replicas = stats["model_pools"]["m"]["replicas"].as_array().unwrap();
    assert!(replicas.iter().all(|r| r["restarts"] == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_can_be_followed_through_the_json_logs() {
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let gantry = Gantry::spawn(
        repo.path(),
        &[(
            "RUST_LOG",
            "debug,ort=warn,actix=info,actix_server=info,h2=info",
        )],
    );
    let base = gantry.base.clone();
    let rx = &gantry.events;
    let client = reqwest::Client::new();
    gantry.wait_for_200(&client, "/api/optimized/health").await;
    let body = json!({"model": "tiny-classifier", "inputs": {"features": tensor(&[1, 64], "FP32", json!(vec![0.25; 64]))}});
    let r = client
        .post(format!("{base}/api/optimized/predict"))
        .header("x-request-id", "follow-me-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Every line of this request names it, on the handler, batcher and replica.
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !messages
        .iter()
        .any(|(m, _): &(String, Value)| m == "inference done")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(event) = rx.recv_timeout(left) else {
            break;
        };
        let mentions = event["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == "follow-me-42"));
        if mentions {
            messages.push((
                event["message"].as_str().unwrap_or_default().to_string(),
                event,
            ));
        }
    }
    gantry.signal("TERM");
    let _ = gantry.exit_status().await;
    let names: Vec<&str> = messages.iter().map(|(m, _)| m.as_str()).collect();
    assert!(names.contains(&"dispatched"), "no batcher line: {names:?}");
    let (_, done) = messages
        .iter()
        .find(|(m, _)| m == "inference done")
        .expect("a replica line");
    for field in [
        "batch_id",
        "batch_size",
        "replica",
        "queue_ms",
        "inference_ms",
    ] {
        assert!(done.get(field).is_some(), "{field} missing: {done}");
    }
    assert_eq!(done["model"], "tiny-classifier");
}

/// One access line per request at `info` (the shipped log level), HTTP and
/// gRPC alike: method, path, status, model, duration, bytes in and out,
/// request id, and the client's trace id from `traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_access_line() {
    use gantry::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;

    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let gantry = Gantry::spawn_with_grpc(repo.path(), &[("GANTRY__CACHE__ENABLED", "false")]);
    let client = reqwest::Client::new();
    gantry.wait_for_200(&client, "/v2/health/ready").await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let body = serde_json::to_vec(&json!({"model": "tiny-classifier",
        "inputs": {"features": tensor(&[1, 64], "FP32", json!(vec![0.25; 64]))}}))
    .unwrap();
    let ok = client
        .post(format!("{}/api/optimized/predict", gantry.base))
        .header("content-type", "application/json")
        .header("x-request-id", "access-1")
        .header("traceparent", &traceparent)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let answer_len = ok.bytes().await.unwrap().len() as u64;
    let missing = client
        .post(format!("{}/v2/models/nope/infer", gantry.base))
        .header("x-request-id", "access-2")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let mut grpc = GrpcInferenceServiceClient::connect(format!(
        "http://{}",
        gantry.grpc.as_deref().expect("gRPC is on")
    ))
    .await
    .unwrap();
    let mut call = tonic::Request::new(crate::common::grpc_request(
        "tiny-classifier",
        "features",
        &[1, 64],
        0.0,
    ));
    call.metadata_mut()
        .insert("x-request-id", "access-3".parse().unwrap());
    call.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    grpc.model_infer(call).await.unwrap();

    let mut lines: HashMap<String, Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(event) = gantry.events.recv_timeout(left) else {
            break;
        };
        // The readiness polls before have lines of their own.
        let id = event["request_id"].as_str().unwrap_or_default().to_string();
        if event["message"] == "access" && id.starts_with("access-") {
            assert!(
                lines.insert(id.clone(), event).is_none(),
                "two access lines for {id}"
            );
        }
    }
    let http = &lines["access-1"];
    assert_eq!(
        (
            &http["protocol"],
            &http["method"],
            &http["path"],
            &http["status"]
        ),
        (
            &json!("http"),
            &json!("POST"),
            &json!("/api/optimized/predict"),
            &json!(200)
        ),
        "{http}"
    );
    assert_eq!(http["model"], "tiny-classifier", "{http}");
    assert_eq!(http["bytes_in"], body.len() as u64, "{http}");
    assert_eq!(http["bytes_out"], answer_len, "{http}");
    assert_eq!(http["trace_id"], trace, "{http}");
    assert!(http["duration_ms"].as_f64().unwrap() > 0.0, "{http}");
    assert_eq!(http["level"], "INFO", "{http}");
    let missing = &lines["access-2"];
    assert_eq!(
        (&missing["status"], &missing["path"]),
        (&json!(404), &json!("/v2/models/nope/infer")),
        "{missing}"
    );
    assert!(missing.get("trace_id").is_none(), "{missing}");
    let grpc = &lines["access-3"];
    assert_eq!(
        (&grpc["protocol"], &grpc["path"], &grpc["status"]),
        (
            &json!("grpc"),
            &json!("/inference.GRPCInferenceService/ModelInfer"),
            &json!(200)
        ),
        "{grpc}"
    );
    assert_eq!(grpc["model"], "tiny-classifier", "{grpc}");
    assert_eq!(grpc["trace_id"], trace, "{grpc}");
    assert!(grpc["bytes_in"].as_u64().unwrap() > 256, "{grpc}");
    assert!(grpc["bytes_out"].as_u64().unwrap() > 40, "{grpc}");
    gantry.signal("TERM");
    assert_eq!(gantry.exit_status().await.code(), Some(0));
}
