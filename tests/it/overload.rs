//! Scheduling under load, with the deterministic fake engine: priorities
//! (higher first, promotion after `max_priority_wait_ms`), requests that
//! expire or whose caller leaves while queued, batches that run out of memory
//! (split and retried, cap lowered), warmup at batch size 1 and the cap, and
//! the memory-aware batch cap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{tensor, Repo, TestServer};
use gantry::media::npy::write_npy;
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use gantry_actors::Tensor;
use serde_json::{json, Value};

/// `x: FP32 [-1, 4]`, each batch taking `batch_ms`.
fn fake(batch_ms: u64) -> FakeEngineFactory {
    FakeEngineFactory::vector(4).with_delay(Duration::from_millis(batch_ms), Duration::ZERO)
}

/// The harness's config without the result cache: repeated inputs must
/// reach the batcher.
fn uncached(models: &std::path::Path) -> gantry::config::Config {
    let mut config = crate::common::config(models);
    config.cache.enabled = false;
    config
}

fn provider(factory: &FakeEngineFactory) -> Arc<FakeProvider> {
    Arc::new(FakeProvider::new(factory.clone()))
}

fn body(value: f32) -> Value {
    json!({"model": "m", "inputs": {"x": tensor(&[1, 4], "FP32", json!([value, 0, 0, 0]))}})
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

/// What a test learns about one request: status, answer, when it finished.
struct Done {
    status: u16,
    answer: Value,
    at: Instant,
}

async fn send(server: &TestServer, body: Value, priority_header: Option<&str>) -> Done {
    let mut request = server
        .client
        .post(server.url("/api/optimized/predict"))
        .json(&body);
    if let Some(priority) = priority_header {
        request = request.header("x-priority", priority);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let answer = response.json().await.expect("JSON body");
    Done {
        status,
        answer,
        at: Instant::now(),
    }
}

/// Starts `send` on its own task, so requests reach the batcher in the
/// order the test starts them (with a pause after each).
fn spawn(
    server: &Arc<TestServer>,
    body: Value,
    priority_header: Option<&'static str>,
) -> tokio::task::JoinHandle<Done> {
    let server = server.clone();
    tokio::spawn(async move { send(&server, body, priority_header).await })
}

async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn batcher_stats(server: &TestServer) -> Value {
    server.stats().await["model_pools"]["m"]["batcher"].clone()
}

/// Engine runs after warmup (which ran `warmup_runs` inferences).
fn runs_after_warmup(factory: &FakeEngineFactory, warmup_runs: usize) -> Vec<usize> {
    let sizes = factory.batch_sizes.lock().expect("lock").clone();
    sizes[warmup_runs..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_request_overtakes_low_ones_queued_before_it() {
    let repo = Repo::new().fake("m", "max_batch_size = 1\n");
    let factory = fake(200);
    let server = Arc::new(TestServer::ready(uncached(repo.path()), provider(&factory)).await);
    // The blocker runs; the first low request waits in the replica's
    // pipeline slot; the other lows wait in the queue.
    let blocker = spawn(&server, body(100.0), None);
    pause(50).await;
    let mut lows = Vec::new();
    for i in 0..4 {
        let low = with(body(i as f32), "priority", json!("low"));
        lows.push(spawn(&server, low, None));
        pause(20).await;
    }
    let high = spawn(&server, body(50.0), Some("high"))
        .await
        .expect("task");
    assert_eq!(high.status, 200, "{}", high.answer);
    assert_eq!(high.answer["outputs"]["y"]["data"][0], 101.0);
    let blocker = blocker.await.expect("task");
    assert_eq!(blocker.status, 200);
    let mut lows_before_high = 0;
    for low in lows {
        let low = low.await.expect("task");
        assert_eq!(low.status, 200, "{}", low.answer);
        if low.at < high.at {
            lows_before_high += 1;
        }
    }
    // Only the low request already handed to the replica ran before it.
    assert_eq!(lows_before_high, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_priority_request_is_not_starved_by_a_stream_of_high_ones() {
    let repo = Repo::new().fake("m", "max_batch_size = 1\nmax_priority_wait_ms = 300\n");
    let factory = fake(100);
    let server = Arc::new(TestServer::ready(uncached(repo.path()), provider(&factory)).await);
    let high = || with(body(1.0), "priority", json!("high"));
    let mut highs = vec![spawn(&server, high(), None)];
    pause(20).await;
    highs.push(spawn(&server, high(), None));
    highs.push(spawn(&server, high(), None));
    pause(20).await;
    let low = spawn(&server, with(body(2.0), "priority", json!("low")), None);
    // High requests arrive faster (every 40 ms) than the engine serves them
    // (100 ms each), for 1.6 s: without promotion the low one would wait
    // until they are all done.
    for _ in 0..40 {
        pause(40).await;
        highs.push(spawn(&server, high(), None));
    }
    let last_high_sent = Instant::now();
    let low = low.await.expect("task");
    assert_eq!(low.status, 200, "{}", low.answer);
    assert!(
        low.at < last_high_sent,
        "the low request waited until high requests stopped coming"
    );
    let mut highs_after_low = 0;
    for high in highs {
        let high = high.await.expect("task");
        assert_eq!(high.status, 200, "{}", high.answer);
        highs_after_low += usize::from(high.at > low.at);
    }
    assert!(highs_after_low >= 10, "{highs_after_low}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_comes_from_the_body_the_header_or_v2_parameters_and_bad_values_are_400() {
    let repo = Repo::new().fake("m", "max_batch_size = 4\n");
    let factory = fake(0);
    let server = TestServer::ready(uncached(repo.path()), provider(&factory)).await;
    for (body, header) in [
        (with(body(1.0), "priority", json!("low")), None),
        (with(body(1.0), "priority", json!("HIGH")), None),
        (body(1.0), Some("normal")),
        // The body wins over the header.
        (with(body(1.0), "priority", json!("high")), Some("low")),
    ] {
        let done = send(&server, body, header).await;
        assert_eq!(done.status, 200, "{}", done.answer);
    }
    for (body, header, names) in [
        (
            with(body(1.0), "priority", json!("urgent")),
            None,
            "\"urgent\"",
        ),
        (with(body(1.0), "priority", json!(1)), None, "\"1\""),
        (body(1.0), Some("9"), "x-priority"),
    ] {
        let done = send(&server, body, header).await;
        assert_eq!(done.status, 400, "{}", done.answer);
        assert_eq!(done.answer["code"], "bad_request");
        let message = done.answer["error"].as_str().unwrap();
        assert!(
            message.contains("priority") && message.contains(names),
            "{message}"
        );
    }

    let infer = server.url("/v2/models/m/infer");
    let v2 = |priority: Value| {
        json!({
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "parameters": {"priority": priority},
        })
    };
    for level in [1, 2, 3] {
        let r = server
            .client
            .post(&infer)
            .json(&v2(json!(level)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // 0 is Triton's "the model's default level" (normal here).
    let r = server
        .client
        .post(&infer)
        .json(&v2(json!(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for bad in [json!(4), json!("high"), json!(1.5)] {
        let r = server
            .client
            .post(&infer)
            .json(&v2(bad.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let answer: Value = r.json().await.unwrap();
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains("parameters.priority") && message.contains("1 (high) to 3 (low)"),
            "{message}"
        );
    }

    // Multipart takes a `priority` field too.
    let npy = write_npy(&Tensor::from_f32(vec![1, 4], &[1.0, 2.0, 3.0, 4.0]).unwrap());
    for (priority, status) in [("low", 200), ("soon", 400)] {
        let form = reqwest::multipart::Form::new()
            .text("model", "m")
            .text("priority", priority)
            .part(
                "file",
                reqwest::multipart::Part::bytes(npy.clone()).file_name("x.npy"),
            );
        let (got, answer) = server.post_form(form).await;
        assert_eq!(got, status, "{priority}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_expires_in_the_queue_is_answered_504_and_never_runs() {
    let repo = Repo::new().fake("m", "max_batch_size = 1\n");
    let factory = fake(400);
    let server = Arc::new(TestServer::ready(uncached(repo.path()), provider(&factory)).await);
    let warmup_runs = factory.batch_sizes.lock().unwrap().len();
    // The blocker runs, the filler waits in the replica's pipeline slot, so
    // the short-lived request waits in the queue past its deadline.
    let blocker = spawn(&server, body(1.0), None);
    pause(50).await;
    let filler = spawn(&server, body(2.0), None);
    pause(50).await;
    let expiring = send(&server, with(body(3.0), "timeout_ms", json!(100)), None).await;
    assert_eq!(expiring.status, 504, "{}", expiring.answer);
    assert_eq!(expiring.answer["code"], "deadline_exceeded");
    for done in [blocker, filler] {
        assert_eq!(done.await.expect("task").status, 200);
    }
    let stats = batcher_stats(&server).await;
    assert_eq!(stats["expired"], 1, "{stats}");
    assert_eq!(stats["cancelled"], 0, "{stats}");
    assert_eq!(stats["items"], 2, "{stats}");
    assert_eq!(stats["queue_depth"], 0, "{stats}");
    assert_eq!(runs_after_warmup(&factory, warmup_runs), [1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_while_queued_is_cancelled_and_takes_no_batch_slot() {
    let repo = Repo::new().fake("m", "max_batch_size = 1\n");
    let factory = fake(400);
    let server = Arc::new(TestServer::ready(uncached(repo.path()), provider(&factory)).await);
    let warmup_runs = factory.batch_sizes.lock().unwrap().len();
    let blocker = spawn(&server, body(1.0), None);
    pause(50).await;
    let filler = spawn(&server, body(2.0), None);
    pause(50).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let gone = impatient
        .post(server.url("/api/optimized/predict"))
        .json(&body(3.0))
        .send()
        .await;
    assert!(gone.is_err_and(|e| e.is_timeout()));
    for done in [blocker, filler] {
        assert_eq!(done.await.expect("task").status, 200);
    }
    let stats = batcher_stats(&server).await;
    assert_eq!(stats["cancelled"], 1, "{stats}");
    assert_eq!(stats["expired"], 0, "{stats}");
    assert_eq!(stats["items"], 2, "{stats}");
    assert_eq!(stats["queue_depth"], 0, "{stats}");
    assert_eq!(runs_after_warmup(&factory, warmup_runs), [1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_run_out_of_memory_are_split_and_the_cap_lowered() {
    let repo = Repo::new().fake("m", "max_batch_size = 8\nbatch_window_ms = 60000\n");
    let mut factory = fake(300);
    factory.fail_above = Some(2);
    let server = Arc::new(TestServer::ready(uncached(repo.path()), provider(&factory)).await);
    let first = spawn(&server, body(100.0), None);
    pause(100).await;
    // Eight requests queue behind the first and leave as one full batch,
    // which runs out of memory: it runs as four batches of two.
    let values: Vec<f32> = (0..8).map(|i| i as f32 * 1.5 - 3.0).collect();
    let mut wave = Vec::new();
    for &v in &values {
        wave.push(spawn(&server, body(v), None));
    }
    assert_eq!(first.await.expect("task").status, 200);
    let mut batched = Vec::new();
    for done in wave {
        let done = done.await.expect("task");
        assert_eq!(done.status, 200, "{}", done.answer);
        assert_eq!(done.answer["batch_size"], 2, "{}", done.answer);
        batched.push(done.answer["outputs"]["y"].clone());
    }
    // The replica tells the batcher to lower the cap once the batch is
    // done, which can be a moment after its requests have their answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = batcher_stats(&server).await;
        if stats["cap_reason"] == "out_of_memory" || Instant::now() > deadline {
            break stats;
        }
        pause(10).await;
    };
    assert_eq!(stats["max_batch_size"], 2, "{stats}");
    assert_eq!(stats["cap_reason"], "out_of_memory", "{stats}");
    assert_eq!(stats["batch_fill"], json!({"1": 1, "8": 1}), "{stats}");
    let replica = &server.stats().await["model_pools"]["m"]["replicas"][0];
    assert_eq!(
        (replica["processed"].as_u64(), replica["errors"].as_u64()),
        (Some(9), Some(0))
    );
    // The same inputs one at a time give the same results.
    for (v, from_batch) in values.iter().zip(batched) {
        let alone = send(&server, body(*v), None).await;
        assert_eq!(alone.status, 200);
        assert_eq!(alone.answer["batch_size"], 1);
        assert_eq!(alone.answer["outputs"]["y"], from_batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_runs_at_batch_size_one_and_at_the_cap() {
    let repo = Repo::new().fake("m", "max_batch_size = 6\nwarmup = 2\n");
    let factory = fake(0);
    let _server = TestServer::ready(uncached(repo.path()), provider(&factory)).await;
    assert_eq!(*factory.batch_sizes.lock().unwrap(), [1, 6, 1, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_capped_at_what_the_free_memory_budget_holds() {
    // Configured: 1000 MB budget, 700 reserved by the replica, 100 MB per
    // item: batches of at most 3.
    let repo = Repo::new().fake(
        "m",
        "max_batch_size = 8\nmemory_mb = 700\nmemory_per_item_mb = 100\nbatch_window_ms = 60000\n",
    );
    let mut config = uncached(repo.path());
    config.memory.limit_mb = 1000;
    let factory = fake(300);
    let server = Arc::new(TestServer::ready(config, provider(&factory)).await);
    let stats = batcher_stats(&server).await;
    assert_eq!(stats["max_batch_size"], 3, "{stats}");
    assert_eq!(stats["cap_reason"], "memory_budget", "{stats}");
    assert_eq!(stats["memory_per_item_mb"], 100, "{stats}");
    let first = spawn(&server, body(0.0), None);
    pause(100).await;
    let wave: Vec<_> = (1..=6)
        .map(|i| spawn(&server, body(i as f32), None))
        .collect();
    assert_eq!(first.await.expect("task").status, 200);
    for done in wave {
        let done = done.await.expect("task");
        assert_eq!(done.status, 200, "{}", done.answer);
        assert_eq!(done.answer["batch_size"], 3, "{}", done.answer);
    }

    // Measured by warmup (the fake engine reports 50 MB per item): 1000 MB
    // budget, 800 reserved, so batches of at most 4.
    let repo = Repo::new().fake("m", "max_batch_size = 8\nmemory_mb = 800\n");
    let mut config = uncached(repo.path());
    config.memory.limit_mb = 1000;
    let mut factory = fake(0);
    factory.memory_per_item_mb = Some(50);
    let server = TestServer::ready(config, provider(&factory)).await;
    let stats = batcher_stats(&server).await;
    assert_eq!(stats["memory_per_item_mb"], 50, "{stats}");
    assert_eq!(stats["max_batch_size"], 4, "{stats}");
    assert_eq!(stats["cap_reason"], "memory_budget", "{stats}");

    // Unknown (an engine that cannot measure): the configured cap.
    let repo = Repo::new().fake("m", "max_batch_size = 8\n");
    let server = TestServer::ready(uncached(repo.path()), provider(&fake(0))).await;
    let stats = batcher_stats(&server).await;
    assert_eq!(stats["memory_per_item_mb"], Value::Null, "{stats}");
    assert_eq!(stats["max_batch_size"], 8, "{stats}");
    assert_eq!(stats["cap_reason"], "max_batch_size", "{stats}");
}
