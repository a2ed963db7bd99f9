//! Replicas for hot models: a backlog that lasts `upscale_delay_s` adds a
//! replica on trial; one that raises throughput stays (until the backlog has
//! been gone `downscale_delay_s`), one that does not is taken back and the
//! model is held from scaling up again. On the fake engine, whose replicas
//! either run side by side or, with `one_device`, one batch at a time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::live::{body, no_cache, until};
use crate::common::{Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::Value;

const SETTINGS: &str =
    "replicas = 1\nmax_replicas = 2\nmax_batch_size = 1\nupscale_delay_s = 1\ndownscale_delay_s = 2\n";

/// A server of model `hot` whose batches take 40 ms, sharing one device
/// when `one_device`.
fn server(one_device: bool) -> (Repo, TestServer) {
    let repo = Repo::new().fake("hot", SETTINGS);
    let mut engine =
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(40), Duration::ZERO);
    if one_device {
        engine.one_device = Some(Arc::new(Mutex::new(())));
    }
    let mut config = no_cache(crate::common::config(repo.path()));
    config.memory.limit_mb = 10_000;
    let server = TestServer::start(config, Arc::new(FakeProvider::new(engine)));
    (repo, server)
}

/// `clients` clients asking `model` back to back for `seconds`; every
/// answer must be a 200.
async fn flood(server: &TestServer, model: &str, clients: usize, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let clients = (0..clients).map(|i| async move {
        while Instant::now() < until {
            let (status, answer) = server.post("/api/optimized/predict", &body(model, i)).await;
            assert_eq!(status, 200, "{answer}");
        }
    });
    futures_util::future::join_all(clients).await;
}

fn actions(stats: &Value) -> Vec<String> {
    stats["residency"]["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["action"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_adds_a_replica_that_stays_while_it_raises_throughput() {
    let (_repo, server) = server(false);
    server.wait_ready().await;
    flood(&server, "hot", 16, 6).await;
    let stats = server.stats().await;
    assert_eq!(actions(&stats), ["scale_up"], "{stats}");
    let reason = stats["residency"]["decisions"][0]["reason"]
        .as_str()
        .unwrap();
    assert!(
        reason.contains("added on trial (2 of at most 2)"),
        "{reason}"
    );
    assert_eq!(stats["model_pools"]["hot"]["max_replicas"], 2);
    // The backlog gone for downscale_delay_s, the added replica leaves.
    let stats = until(&server, "back to one replica", |s| {
        s["model_pools"]["hot"]["replicas"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert_eq!(actions(&stats), ["scale_up", "scale_down"], "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_adds_no_throughput_is_taken_back_and_not_tried_again_at_once() {
    let (_repo, server) = server(true);
    server.wait_ready().await;
    flood(&server, "hot", 16, 8).await;
    let stats = until(&server, "one replica again", |s| {
        s["model_pools"]["hot"]["replicas"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert_eq!(actions(&stats), ["scale_up", "undo_scale_up"], "{stats}");
    let reason = stats["residency"]["decisions"][1]["reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("no scale-up for 60 s"), "{reason}");
}

/// Whether each replica of `model` maps its weights.
fn mapped(stats: &Value, model: &str) -> Vec<bool> {
    stats["model_pools"][model]["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["weights_mapped"] == true)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_loaded_on_demand_that_runs_batches_gets_a_packed_replica_in_place_of_its_mapped_one(
) {
    let settings = "replicas = 1\nmin_replicas = 0\nmax_batch_size = 8\ndownscale_delay_s = 1\n";
    let repo = Repo::new().fake("busy", settings).fake("calm", settings);
    let mut engine =
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(20), Duration::ZERO);
    // Loads slow enough that a mapped replica drained before its packed
    // replacement is ready would leave busy with no ready replica in a look.
    engine.load_delay = Duration::from_millis(1500);
    let copies = tempfile::tempdir().unwrap();
    let mut config = no_cache(crate::common::config(repo.path()));
    config.memory.limit_mb = 10_000;
    config.memory.weights_dir = copies.path().display().to_string();
    config.memory.repack_after_s = 1;
    let server = TestServer::start(config, Arc::new(FakeProvider::new(engine)));
    server.wait_ready().await;
    // Idle, both leave memory (min_replicas = 0); asked for, both come back
    // as a load on demand does: mapped.
    until(&server, "both out of memory", |s| {
        ["busy", "calm"]
            .iter()
            .all(|m| s["model_pools"][m]["residency"] == "cold")
    })
    .await;
    for model in ["busy", "calm"] {
        let (status, answer) = server.post("/api/optimized/predict", &body(model, 1)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let stats = server.stats().await;
    assert_eq!(mapped(&stats, "busy"), [true], "{stats}");
    assert_eq!(mapped(&stats, "calm"), [true], "{stats}");
    // busy runs batches of up to 8 (16 clients), calm one request at a
    // time; stats are read while both are still asked for (idle, they
    // would leave memory again).
    let never_unready = std::sync::atomic::AtomicBool::new(true);
    let watch = async {
        until(&server, "busy's replica packed", |s| {
            if s["model_pools"]["busy"]["ready"] != true {
                never_unready.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            mapped(s, "busy") == [false]
        })
        .await
    };
    let (stats, (), ()) = tokio::join!(
        watch,
        flood(&server, "busy", 16, 8),
        flood(&server, "calm", 1, 8)
    );
    let repacks: Vec<&Value> = stats["residency"]["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["action"] == "repack")
        .collect();
    assert_eq!(repacks.len(), 1, "{stats}");
    let repack = repacks[0];
    assert_eq!(repack["model"], "busy", "{stats}");
    let reason = repack["reason"].as_str().unwrap();
    assert!(
        reason.contains("maps its weights") && reason.contains("packed replica"),
        "{reason}"
    );
    assert_eq!(
        mapped(&stats, "calm"),
        [true],
        "batches of one gain nothing: {stats}"
    );
    assert!(
        never_unready.load(std::sync::atomic::Ordering::Relaxed),
        "the mapped replica served until the packed one was ready"
    );
    let stats = server.stats().await;
    assert_eq!(
        actions(&stats).iter().filter(|a| *a == "repack").count(),
        1,
        "{stats}"
    );
}
