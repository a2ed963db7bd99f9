//! Footprints measured, not guessed: a replica's reservation starts as the
//! estimate from its file (or model.toml's `memory_mb`) and, once its engine
//! is loaded and warmed, becomes what its device's memory grew by (loads
//! one at a time, so each growth is its own). `memory_mb` still wins. Stats
//! show both per replica, and what a measurement gives back leaves room for
//! a model that did not fit at startup.

use std::sync::Arc;

use crate::common::live::{no_cache, replica_states, until};
use crate::common::{Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::Value;

fn replica_mb(stats: &Value, model: &str, key: &str) -> Vec<Option<u64>> {
    stats["model_pools"][model]["replicas"]
        .as_array()
        .map(|r| r.iter().map(|r| r[key].as_u64()).collect())
        .unwrap_or_default()
}

/// Fake engines that each hold 10 MB. `b-small`'s tiny file is estimated
/// at 66 MB a replica; measured, each holds 10, and the 112 MB given back
/// hold `c-late` (150 MB: 68 MB would be free had the estimates stood):
/// startup measures each model before it places the next, so all three
/// start, and nothing is evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_footprints_replace_the_estimate_and_give_room_back() {
    let repo = Repo::new()
        .fake("a-pinned", "memory_mb = 500\n")
        .fake("b-small", "replicas = 2\n")
        .fake("c-late", "memory_mb = 150\n");
    let mut config = no_cache(crate::common::config(repo.path()));
    config.memory.limit_mb = 700;
    let provider = FakeProvider::new(FakeEngineFactory::vector(4).with_footprint(10));
    let server = TestServer::start(config, Arc::new(provider));
    let stats = until(&server, "every replica ready", |s| {
        ["a-pinned", "b-small", "c-late"].iter().all(|m| {
            !replica_states(s, m).is_empty() && replica_states(s, m).iter().all(|st| st == "ready")
        })
    })
    .await;
    assert_eq!(
        replica_mb(&stats, "b-small", "measured_mb"),
        [Some(10), Some(10)],
        "{stats}"
    );
    assert_eq!(
        replica_mb(&stats, "b-small", "reserved_mb"),
        [Some(10), Some(10)]
    );
    assert_eq!(stats["model_pools"]["b-small"]["memory_mb_per_replica"], 10);
    // memory_mb wins: measured, shown, not applied.
    assert_eq!(replica_mb(&stats, "a-pinned", "measured_mb"), [Some(10)]);
    assert_eq!(replica_mb(&stats, "a-pinned", "reserved_mb"), [Some(500)]);
    assert_eq!(
        stats["model_pools"]["a-pinned"]["memory_mb_per_replica"],
        500
    );
    assert_eq!(replica_mb(&stats, "c-late", "reserved_mb"), [Some(150)]);
    assert_eq!(
        stats["memory"]["reserved_mb"],
        500 + 10 + 10 + 150,
        "{stats}"
    );
    assert_eq!(stats["memory"]["refused"], serde_json::json!([]));
    // Fake engines hold no process memory: no growth is shown.
    assert!(
        stats["memory"]["devices"][0]
            .get("process_growth_mb")
            .is_none(),
        "{stats}"
    );
    let evictions = stats["residency"]["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["action"] == "evict")
        .count();
    assert_eq!(evictions, 0, "{stats}");
}

/// With ONNX Runtime, each replica's footprint is read from the process's
/// resident set, and its reservation is that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_runtime_replicas_reserve_what_they_were_measured_to_hold() {
    let repo = Repo::new().copy(
        "models/tiny-classifier",
        "mlp",
        Some("replicas = 2\nmax_batch_size = 8\n"),
    );
    let server = TestServer::start(
        no_cache(crate::common::config(repo.path())),
        crate::common::onnx_provider(),
    );
    let stats = until(&server, "both replicas ready", |s| {
        replica_states(s, "mlp") == ["ready", "ready"]
    })
    .await;
    let measured = replica_mb(&stats, "mlp", "measured_mb");
    assert!(
        measured.iter().all(|m| m.is_some_and(|mb| mb >= 1)),
        "{stats}"
    );
    assert_eq!(replica_mb(&stats, "mlp", "reserved_mb"), measured);
    let total: u64 = measured.iter().flatten().sum();
    assert_eq!(stats["memory"]["reserved_mb"], total, "{stats}");
    // The runtime's one-time setup ran before the first model, so it is
    // not in that model's footprint; the process's growth is shown beside
    // the reservations.
    assert!(gantry_actors::engine::onnx::runtime_primed());
    // Loaded at startup, not on demand: the weights are packed in memory.
    let mapped: Vec<&Value> = stats["model_pools"]["mlp"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["weights_mapped"])
        .collect();
    assert_eq!(
        mapped,
        [&Value::Bool(false), &Value::Bool(false)],
        "{stats}"
    );
    assert!(
        stats["memory"]["devices"][0]["process_growth_mb"].is_u64(),
        "{stats}"
    );
}
