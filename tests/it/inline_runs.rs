//! Short runs on the worker that received the request
//! (`runtime.inline_run_us`): a fast model's lone requests cross no
//! thread, and count as the batches of the replica that ran them in the
//! stats and the metrics; a slow model, the setting at 0, or a crowd larger
//! than the replicas go through the batcher, every caller still getting its
//! own answer.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{tensor, Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::{json, Value};

fn fake(batch_ms: u64) -> Arc<FakeProvider> {
    Arc::new(FakeProvider::new(
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(batch_ms), Duration::ZERO),
    ))
}

async fn predict(server: &TestServer, value: f32) -> Value {
    let body =
        json!({"model": "m", "inputs": {"x": tensor(&[1, 4], "FP32", json!([value, 0, 0, 0]))}});
    let (status, answer) = server.post("/api/optimized/predict", &body).await;
    assert_eq!(status, 200, "{answer}");
    // The fake engine answers 2x + 1: each caller gets its own row back.
    assert_eq!(
        answer["outputs"]["y"]["data"][0].as_f64().unwrap(),
        2.0 * value as f64 + 1.0
    );
    answer
}

/// The model's batcher stats once `items` items have run (replicas report a
/// batch just after its answers went out).
async fn batcher_after(server: &TestServer, items: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.stats().await;
        let batcher = stats["model_pools"]["m"]["batcher"].clone();
        if batcher["items"] == items || std::time::Instant::now() > deadline {
            return stats["model_pools"]["m"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sum_of(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(series) && l.contains("model=\"m\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_models_lone_requests_run_on_the_worker_and_are_counted() {
    let repo = Repo::new().fake("m", "replicas = 2\nmax_batch_size = 8\n");
    let server = TestServer::ready(crate::common::config(repo.path()), fake(0)).await;
    for i in 0..20 {
        predict(&server, i as f32).await;
    }
    let pool = batcher_after(&server, 20).await;
    let batcher = &pool["batcher"];
    assert_eq!(batcher["items"], 20, "{pool}");
    assert_eq!(batcher["batches"], 20, "{pool}");
    assert_eq!(
        batcher["inline_runs"], 20,
        "one after another, all on the worker: {pool}"
    );
    assert_eq!(batcher["batch_fill"], json!({"1": 20}), "{pool}");
    let processed: u64 = pool["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["processed"].as_u64().unwrap())
        .sum();
    assert_eq!(processed, 20, "{pool}");
    let stats = server.stats().await;
    assert_eq!(stats["runtime"]["inline_run_us"], 50);
    // The metrics say what the stats say.
    let page = server.metrics_page().await;
    assert_eq!(sum_of(&page, "gantry_batch_size_count"), 20.0, "{page}");
    assert_eq!(sum_of(&page, "gantry_batch_size_sum"), 20.0, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_models_and_the_setting_at_zero_go_through_the_batcher() {
    // Runs of 5 ms are far above the 50 us the lane takes.
    let repo = Repo::new().fake("m", "replicas = 1\nmax_batch_size = 8\n");
    let server = TestServer::ready(crate::common::config(repo.path()), fake(5)).await;
    for i in 0..5 {
        predict(&server, i as f32).await;
    }
    let pool = batcher_after(&server, 5).await;
    assert_eq!(pool["batcher"]["inline_runs"], 0, "{pool}");
    drop(server);

    let repo = Repo::new().fake("m", "replicas = 1\nmax_batch_size = 8\n");
    let mut config = crate::common::config(repo.path());
    config.runtime.inline_run_us = 0;
    let server = TestServer::ready(config, fake(0)).await;
    for i in 0..5 {
        predict(&server, i as f32).await;
    }
    let pool = batcher_after(&server, 5).await;
    assert_eq!(pool["batcher"]["inline_runs"], 0, "{pool}");
    assert_eq!(pool["batcher"]["batches"], 5, "{pool}");
    assert_eq!(server.stats().await["runtime"]["inline_run_us"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_shares_the_worker_and_the_batcher_and_every_caller_gets_its_own_answer() {
    let repo = Repo::new().fake("m", "replicas = 1\nmax_batch_size = 8\n");
    let server = TestServer::ready(crate::common::config(repo.path()), fake(0)).await;
    let n = 200;
    futures_util::future::join_all((0..n).map(|i| predict(&server, i as f32))).await;
    let pool = batcher_after(&server, n as u64).await;
    let batcher = &pool["batcher"];
    assert_eq!(batcher["items"], n, "{pool}");
    assert_eq!(pool["replicas"][0]["processed"], n, "{pool}");
    let fill: u64 = batcher["batch_fill"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(size, runs)| size.parse::<u64>().unwrap() * runs.as_u64().unwrap())
        .sum();
    assert_eq!(fill, n as u64, "{pool}");
    assert!(batcher["inline_runs"].as_u64().unwrap() <= batcher["batches"].as_u64().unwrap());
}
