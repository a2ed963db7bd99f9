//! Helpers for tests that drive a live server on the fake engine: request
//! bodies, admin calls, reloads, and polling stats until a change lands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::{json, Value};

use super::{tensor, TestServer};

/// A fake engine of 4-vectors whose batches take `batch_ms`.
pub fn provider(batch_ms: u64) -> Arc<FakeProvider> {
    Arc::new(FakeProvider::new(
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(batch_ms), Duration::ZERO),
    ))
}

/// A predict body for the fake engine, cache off.
pub fn body(model: &str, value: usize) -> Value {
    json!({"model": model, "cache": false, "inputs": {"x": tensor(&[1, 4], "FP32", json!([value, 0, 0, 0]))}})
}

/// `config` with the result cache off.
pub fn no_cache(mut config: gantry::config::Config) -> gantry::config::Config {
    config.cache.enabled = false;
    config
}

/// An admin call: status and JSON body (null when there is none).
pub async fn admin(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server.client.request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Rewrites a model's `model.toml`, then asks for a reload: status and report.
pub async fn rewrite_and_reload(
    server: &TestServer,
    repo: &std::path::Path,
    model: &str,
    toml: &str,
) -> (u16, Value) {
    std::fs::write(repo.join(model).join("model.toml"), toml).unwrap();
    admin(server, reqwest::Method::POST, "/api/optimized/reload", None).await
}

/// Polls stats until `check` holds (at most 20 s).
pub async fn until(server: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = server.stats().await;
        if check(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "never {what}: {stats}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The state of each replica of `model`, in id order.
pub fn replica_states(stats: &Value, model: &str) -> Vec<String> {
    stats["model_pools"][model]["replicas"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["state"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}
