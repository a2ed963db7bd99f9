//! What is counted is what was answered: every prediction request is
//! recorded once, at the edge, with the status actually sent, in `/metrics`,
//! in stats and in the prediction log row, for JSON predictions, uploads,
//! batch uploads and KServe v2 inference (JSON and binary); 429s are counted
//! for their model, those from a full batcher mailbox among its refusals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::database::TempDatabase;
use crate::common::{tensor, Repo, TestServer};
use futures_util::future::join_all;
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use gantry_actors::signature::{ModelSignature, TensorSpec};
use gantry_actors::DataType;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

/// `img`: 8x8 grey images in, a "classes" answer out; the fake engine
/// answers an image-shaped tensor, which is no row of scores, so shaping
/// the answer fails after inference (500).
const IMAGE_MODEL: &str = "[input]\nkind = \"image\"\ncolor = \"grey\"\nwidth = 8\nheight = 8\n\n\
                           [output]\nkind = \"classes\"\n";

fn provider(batch_ms: u64) -> Arc<FakeProvider> {
    let vector =
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(batch_ms), Duration::ZERO);
    let mut image = FakeEngineFactory::vector(4);
    let spec =
        |name: &str| TensorSpec::new(name, DataType::Fp32, vec![None, Some(1), Some(8), Some(8)]);
    image.signature = ModelSignature {
        inputs: vec![spec("image")],
        outputs: vec![spec("scores")],
        unbatched: false,
    };
    let mut provider = FakeProvider::new(vector);
    provider.per_model.insert("img".into(), image);
    Arc::new(provider)
}

fn image() -> Vec<u8> {
    let path = crate::common::root().join("tests/fixtures/media/spheroids.png");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn upload_form(files: usize) -> Form {
    let mut form = Form::new().text("model", "img");
    for i in 0..files {
        form = form.part(
            "file",
            Part::bytes(image()).file_name(format!("spheroids-{i}.png")),
        );
    }
    form
}

fn x(value: usize) -> Value {
    tensor(&[1, 4], "FP32", json!([value, 0, 0, 0]))
}

async fn page(server: &TestServer) -> String {
    server.metrics_page().await
}

/// Answers of `model` by status, as `/metrics` counts them.
fn counted(page: &str, model: &str, status: u16) -> f64 {
    crate::common::metric_sample(
        page,
        "gantry_requests_total",
        &[("model", model), ("status", &status.to_string())],
    )
}

/// Answers of `model` by status since start, as stats counts them.
fn stats_statuses(stats: &Value, model: &str) -> Value {
    stats["performance_metrics"]["models"][model]["statuses"].clone()
}

/// The logged record of a prediction id (waits for it).
async fn logged(server: &TestServer, prediction_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server
            .get(&format!("/api/optimized/predictions/{prediction_id}"))
            .await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 404, "{body}");
        assert!(Instant::now() < deadline, "{prediction_id} never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn server(database: &TempDatabase, batch_ms: u64) -> (TestServer, Repo) {
    let repo = Repo::new()
        .fake("m", "")
        .fake("v", "")
        .fake("img", IMAGE_MODEL);
    let mut config = crate::common::config(repo.path());
    config.store.database_url = database.url();
    config.store.flush_ms = 20;
    config.cache.enabled = false;
    let server = TestServer::ready(config, provider(batch_ms)).await;
    (server, repo)
}

/// The status, the `x-prediction-id` header and the body of a response.
async fn sent(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-prediction-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, id, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_inference_is_counted_and_logged_with_the_status_sent() {
    let database = TempDatabase::create().await;
    let (server, _repo) = server(&database, 0).await;

    // JSON predict: inference succeeds, the answer names an unknown output.
    let r = server
        .client
        .post(server.url("/api/optimized/predict"))
        .json(&json!({"model": "m", "inputs": {"x": x(1)}, "outputs": ["nope"]}))
        .send()
        .await
        .unwrap();
    let (status, json_id, body) = sent(r).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_input"))
    );

    // v2, JSON tensors and binary tensors, the same failure.
    let r = server
        .client
        .post(server.url("/v2/models/v/infer"))
        .json(&json!({
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "nope"}]
        }))
        .send()
        .await
        .unwrap();
    let (status, v2_json_id, _) = sent(r).await;
    assert_eq!(status, 422);
    let raw: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let header = json!({
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "nope", "parameters": {"binary_data": true}}]
    });
    let r = server
        .post_binary("/v2/models/v/infer", &header, &raw)
        .await;
    let (status, v2_binary_id, _) = sent(r).await;
    assert_eq!(status, 422);

    // An upload whose answer cannot be shaped after inference: 500.
    let r = server
        .client
        .post(server.url("/api/optimized/predict"))
        .multipart(upload_form(1))
        .send()
        .await
        .unwrap();
    let (status, upload_id, body) = sent(r).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("inference_failed")),
        "{body}"
    );

    // A batch upload: each file its own record, with its entry's status.
    let (status, batch) = server
        .post_form_to("/api/optimized/predict/batch", upload_form(2))
        .await;
    assert_eq!(status, 200, "{batch}");
    let entries = batch["results"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let mut batch_ids = Vec::new();
    for entry in entries {
        assert_eq!(entry["status"], 500, "{entry}");
        batch_ids.push(
            entry["prediction_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }

    let metrics = page(&server).await;
    let stats = server.stats().await;
    for (model, status, n) in [("m", 422, 1u32), ("v", 422, 2), ("img", 500, 3)] {
        assert_eq!(counted(&metrics, model, status), f64::from(n), "{model}");
        assert_eq!(
            counted(&metrics, model, 200),
            0.0,
            "{model}: nothing was a 200"
        );
        let statuses = stats_statuses(&stats, model);
        assert_eq!(statuses, json!({ status.to_string(): n }), "{model}");
        let window = &stats["performance_metrics"]["models"][model];
        assert_eq!(
            (window["requests"].as_u64(), window["errors"].as_u64()),
            (Some(u64::from(n)), Some(u64::from(n))),
            "{model}: {window}"
        );
    }
    assert!(!json_id.is_empty(), "a failed answer names its record");
    assert_ne!(
        batch_ids[0], batch_ids[1],
        "each file has a record of its own"
    );
    for (id, status) in [
        (json_id, 422),
        (v2_json_id, 422),
        (v2_binary_id, 422),
        (upload_id, 500),
        (batch_ids[0].clone(), 500),
        (batch_ids[1].clone(), 500),
    ] {
        let row = logged(&server, &id).await;
        assert_eq!(
            (row["status"].as_str(), row["http_status"].as_u64()),
            (Some("error"), Some(status)),
            "{row}"
        );
        assert!(
            row["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{row}"
        );
        assert_eq!(row["batch_size"], 1, "it did run: {row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_busy_refusals_are_counted_for_their_model() {
    let database = TempDatabase::create().await;
    let repo = Repo::new().fake("img", IMAGE_MODEL);
    let mut config = crate::common::config(repo.path());
    config.store.database_url = database.url();
    config.cache.enabled = false;
    // One decode at a time and none waiting: the other files of a batch
    // are refused while the first decodes.
    config.media.threads = 1;
    config.media.queue_capacity = 0;
    let server = TestServer::ready(config, provider(0)).await;

    let mut busy = 0;
    let mut sent_statuses = std::collections::BTreeMap::<u64, u64>::new();
    for _ in 0..10 {
        let (status, batch) = server
            .post_form_to("/api/optimized/predict/batch", upload_form(8))
            .await;
        assert_eq!(status, 200, "{batch}");
        for entry in batch["results"].as_array().unwrap() {
            let status = entry["status"].as_u64().unwrap();
            *sent_statuses.entry(status).or_default() += 1;
            if status == 429 {
                assert_eq!(entry["code"], "media_busy", "{entry}");
                busy += 1;
            }
        }
        if busy > 0 {
            break;
        }
    }
    assert!(busy > 0, "no file was ever refused: {sent_statuses:?}");
    let metrics = page(&server).await;
    assert_eq!(counted(&metrics, "img", 429), f64::from(busy));
    assert_eq!(counted(&metrics, "_unknown", 429), 0.0);
    let statuses = stats_statuses(&server.stats().await, "img");
    let expected: serde_json::Map<String, Value> = sent_statuses
        .iter()
        .map(|(status, n)| (status.to_string(), json!(n)))
        .collect();
    assert_eq!(statuses, Value::Object(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_a_full_batcher_mailbox_are_counted_as_rejected() {
    let repo = Repo::new().fake("q", "queue_capacity = 1\nmax_batch_size = 1\n");
    let mut config = crate::common::live::no_cache(crate::common::config(repo.path()));
    config.server.workers = 2;
    let server = TestServer::ready(config, provider(20)).await;

    // Hold the thread the batcher runs on, as a busy one would be, while a
    // burst arrives: its mailbox fills and the rest are refused at once.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    server.arbiter.spawn(async move {
        let _ = started_tx.send(());
        let _ = release_rx.recv_timeout(Duration::from_secs(20));
    });
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server's arbiter runs the blocker");

    let burst = 64;
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let requests = (0..burst).map(|i| {
        let (client, url, answered) = (
            server.client.clone(),
            server.url("/api/optimized/predict"),
            answered.clone(),
        );
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"model": "q", "inputs": {"x": x(i)}}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (status, body)
        })
    });
    let requests: Vec<_> = requests.collect();
    // Those refused at the mailbox are answered while the batcher is held.
    let deadline = Instant::now() + Duration::from_secs(15);
    while answered.load(std::sync::atomic::Ordering::SeqCst) < burst / 2
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release_tx.send(()).unwrap();
    let outcomes: Vec<(u16, Value)> = join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let full = outcomes.iter().filter(|(s, _)| *s == 429).count();
    for (status, body) in &outcomes {
        assert!(matches!(status, 200 | 429), "{status}: {body}");
        if *status == 429 {
            assert_eq!(body["code"], "queue_full");
        }
    }
    assert!(full > 0, "the burst was never refused");

    let stats = server.stats().await;
    assert_eq!(
        stats["model_pools"]["q"]["batcher"]["rejected"].as_u64(),
        Some(full as u64),
        "{}",
        stats["model_pools"]["q"]["batcher"]
    );
    let metrics = page(&server).await;
    assert_eq!(
        crate::common::metric_sample(
            &metrics,
            "gantry_requests_rejected_total",
            &[("model", "q")]
        ),
        full as f64
    );
    assert_eq!(counted(&metrics, "q", 429), full as f64);
    assert_eq!(counted(&metrics, "q", 200), (burst - full) as f64);
}
