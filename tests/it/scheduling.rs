//! Dispatch and supervision with the deterministic fake engine, where timing
//! must be controlled: replicas share work, a lone request does not wait the
//! window, full batches leave early, partial ones when the window ends, the
//! memory budget refuses what does not fit, one bad model does not stop the
//! others.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{tensor, Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::{json, Value};

fn slow_fake(batch_ms: u64) -> Arc<FakeProvider> {
    Arc::new(FakeProvider::new(
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(batch_ms), Duration::ZERO),
    ))
}

fn body(model: &str, value: f32) -> Value {
    json!({"model": model, "inputs": {"x": tensor(&[1, 4], "FP32", json!([value, 0, 0, 0]))}})
}

async fn concurrently(server: &TestServer, model: &str, n: usize) -> Vec<Value> {
    futures_util::future::join_all((0..n).map(|i| async move {
        let (status, answer) = server
            .post("/api/optimized/predict", &body(model, i as f32))
            .await;
        assert_eq!(status, 200, "{answer}");
        // The fake engine answers 2x + 1: each caller gets its own row back.
        assert_eq!(
            answer["outputs"]["y"]["data"][0].as_f64().unwrap(),
            2.0 * i as f64 + 1.0
        );
        answer
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_both_do_work() {
    let repo = Repo::new().fake(
        "m",
        "replicas = 2\nmax_batch_size = 2\nbatch_window_ms = 5\n",
    );
    let server = TestServer::ready(crate::common::config(repo.path()), slow_fake(50)).await;
    let answers = concurrently(&server, "m", 16).await;
    let used: BTreeSet<u64> = answers
        .iter()
        .map(|a| a["replica"].as_u64().unwrap())
        .collect();
    assert_eq!(used, BTreeSet::from([0, 1]));
    // Replicas report a batch done just after its answers go out.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = server.stats().await;
        let replicas = stats["model_pools"]["m"]["replicas"]
            .as_array()
            .unwrap()
            .clone();
        let done: u64 = replicas
            .iter()
            .map(|r| r["processed"].as_u64().unwrap())
            .sum();
        if done == 16 || std::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let replicas = stats["model_pools"]["m"]["replicas"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(replicas.len(), 2);
    for r in &replicas {
        assert_eq!(r["state"], "ready");
        assert!(r["processed"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["inflight"], 0);
    }
    let processed: u64 = replicas
        .iter()
        .map(|r| r["processed"].as_u64().unwrap())
        .sum();
    assert_eq!(processed, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_does_not_wait_the_window() {
    let repo = Repo::new().fake("m", "max_batch_size = 8\nbatch_window_ms = 20000\n");
    let server = TestServer::ready(crate::common::config(repo.path()), slow_fake(0)).await;
    let (status, answer) = server.post("/api/optimized/predict", &body("m", 1.0)).await;
    assert_eq!(status, 200);
    // The replica was idle, so the batch left at once instead of after 20 s.
    assert!(
        answer["timings_ms"]["queue"].as_f64().unwrap() < 10_000.0,
        "{answer}"
    );
    assert_eq!(answer["batch_size"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batches_leave_before_the_window_and_partial_ones_after_it() {
    let repo = Repo::new()
        .fake("full", "max_batch_size = 4\nbatch_window_ms = 60000\n")
        .fake("partial", "max_batch_size = 8\nbatch_window_ms = 200\n");
    let server = TestServer::ready(crate::common::config(repo.path()), slow_fake(400)).await;
    for (model, wave, expected) in [("full", 4, 4), ("partial", 3, 3)] {
        // The first request occupies the replica; the wave queues behind it.
        let first_body = body(model, 100.0);
        let first = server.post("/api/optimized/predict", &first_body);
        let wave = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            concurrently(&server, model, wave).await
        };
        let ((status, _), answers) = tokio::join!(first, wave);
        assert_eq!(status, 200);
        for a in &answers {
            assert_eq!(a["batch_size"], expected, "{model}: {a}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_does_not_fit_at_startup_is_left_out_and_what_never_fits_is_reported() {
    let repo = Repo::new()
        .fake("fits", "replicas = 2\nmemory_mb = 60\n")
        .fake("huge", "memory_mb = 500\n");
    let mut config = crate::common::config(repo.path());
    config.memory.limit_mb = 100;
    let server = TestServer::start(config, slow_fake(0));
    // "huge" can never fit (500 MB of a 100 MB budget), so health stays 503.
    let mut health = (0, Value::Null);
    for _ in 0..200 {
        health = server.get("/api/optimized/health").await;
        if health.1["models"]["fits"]["ready"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, health) = health;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "unavailable");
    assert_eq!(health["models"]["fits"]["ready_replicas"], 1);
    assert_eq!(health["models"]["huge"]["ready"], false);

    let stats = server.stats().await;
    let memory = &stats["memory"];
    assert_eq!(memory["source"], "config");
    assert_eq!(
        (memory["total_mb"].as_u64(), memory["reserved_mb"].as_u64()),
        (Some(100), Some(60))
    );
    let refused: BTreeSet<&str> = memory["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["replica"].as_str().unwrap())
        .collect();
    // Startup loads what fits: fits' second replica is not kept waiting
    // (room made later goes to what requests ask for); huge can never fit.
    assert_eq!(refused, BTreeSet::from(["huge/0"]));
    let fits = &stats["model_pools"]["fits"];
    assert_eq!(fits["replicas"].as_array().map(Vec::len), Some(1), "{fits}");
    assert_eq!(fits["residency"], "resident");
    let huge = &stats["model_pools"]["huge"];
    assert_eq!(huge["residency"], "failed");
    assert!(
        huge["replicas"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("more than the budget's whole 100 MB"),
        "{huge}"
    );

    let (status, answer) = server
        .post("/api/optimized/predict", &body("fits", 1.0))
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = server
        .post("/api/optimized/predict", &body("huge", 1.0))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("model_not_ready")),
        "{answer}"
    );
}

/// Twenty copies of the MLP (real ONNX Runtime sessions, two replicas
/// each) on a machine of two cores: every session shares the one pool, so
/// none is refused for threads, and each answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_models_share_the_cores_and_all_serve() {
    let mut repo = Repo::new();
    let names: Vec<String> = (0..20).map(|i| format!("mlp-{i:02}")).collect();
    for name in &names {
        let toml = "replicas = 2\nmax_batch_size = 32\nbatch_window_ms = 2\n";
        repo = repo.copy("models/tiny-classifier", name, Some(toml));
    }
    let config = crate::common::config(repo.path());
    let server = TestServer::ready(config, crate::common::onnx_provider()).await;
    // Ready answers once each model has one ready replica; the second ones
    // may still be warming up.
    let stats = crate::common::live::until(&server, "every replica of every model ready", |s| {
        s["model_pools"].as_object().is_some_and(|pools| {
            pools.len() == 20
                && pools.values().all(|p| {
                    p["replicas"]
                        .as_array()
                        .is_some_and(|r| r.iter().all(|r| r["state"] == "ready"))
                })
        })
    })
    .await;
    for name in &names {
        let replicas = stats["model_pools"][name]["replicas"].as_array().unwrap();
        let states: Vec<&str> = replicas
            .iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["ready", "ready"], "{name}: {replicas:?}");
    }
    assert_eq!(stats["memory"]["refused"], json!([]));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(stats["runtime"]["intra_op_threads"], cores);
    let features: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let mut first: Option<Value> = None;
    for name in &names {
        let body = json!({
            "model": name,
            "inputs": {"features": tensor(&[1, 64], "FP32", json!(features))},
            "cache": false,
        });
        let (status, answer) = server.post("/api/optimized/predict", &body).await;
        assert_eq!(status, 200, "{name}: {answer}");
        let logits = answer["outputs"]["logits"]["data"].clone();
        assert_eq!(
            logits.as_array().map(Vec::len),
            Some(10),
            "{name}: {answer}"
        );
        // The same weights answer the same, whichever copy runs them.
        match &first {
            None => first = Some(logits),
            Some(expected) => assert_eq!(&logits, expected, "{name}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_model_toml_does_not_stop_the_others() {
    let repo = Repo::new()
        .fake("good", "replicas = 1\n")
        .fake("bad", "max_batch_size = \"eight\"\n");
    let server = TestServer::ready(crate::common::config(repo.path()), slow_fake(0)).await;
    let (status, health) = server.get("/api/optimized/health").await;
    assert_eq!(status, 200, "{health}");
    let why = health["failed_models"]["bad"].as_str().unwrap();
    assert!(
        why.contains("bad/model.toml") && why.contains("max_batch_size"),
        "{why}"
    );
    let (status, _) = server
        .post("/api/optimized/predict", &body("good", 1.0))
        .await;
    assert_eq!(status, 200);
    let (status, answer) = server
        .post("/api/optimized/predict", &body("bad", 1.0))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let stats = server.stats().await;
    assert!(stats["failed_models"]["bad"].is_string());
}

/// Long CPU runs on the shared pool take it one at a time, short ones never
/// wait: two replicas of the UNet (milliseconds a run) take the gate and,
/// kept busy together, wait for each other; the MLP beside it (microseconds
/// a run) never takes it. Both are counted in the stats and `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_runs_take_the_shared_pool_in_turn_and_short_ones_pass() {
    let repo = Repo::new()
        .copy(
            "models/unet-seg",
            "unet",
            Some("replicas = 2\nmax_batch_size = 1\n"),
        )
        .copy(
            "models/tiny-classifier",
            "mlp",
            Some("replicas = 1\nmax_batch_size = 1\n"),
        );
    let mut config = crate::common::config(repo.path());
    // Every request an inference (the UNet requests below are identical).
    config.cache.enabled = false;
    let provider = crate::common::onnx_provider();
    // The process's gate (`runtime.exclusive_run_ms` sets it in the binary):
    // far below a UNet run (1.5-5 ms on 2 cores), far above an MLP run
    // (microseconds), whatever the machine's speed that day.
    gantry_actors::engine::pool_gate::POOL_GATE.set_threshold(Duration::from_micros(300));
    let server = TestServer::ready(config, provider).await;
    let gate = |stats: &Value| {
        let g = &stats["runtime"]["pool_gate"];
        (
            g["gated_runs"].as_u64().unwrap(),
            g["waited_runs"].as_u64().unwrap(),
        )
    };
    let stats = crate::common::live::until(&server, "both unet replicas ready", |s| {
        s["model_pools"]["unet"]["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["state"] == "ready"))
    })
    .await;
    assert_eq!(stats["runtime"]["exclusive_run_ms"], 0.3);

    // The MLP alone: microseconds a run, never gated once its session has
    // run a few times (a session's first runs, warmup's, are slow, and a
    // busy machine can make them slower than the threshold; the prediction
    // is the shortest of the last four).
    let features: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    for _ in 0..4 {
        let body = json!({"model": "mlp", "inputs": {"features": tensor(&[1, 64], "FP32", json!(features))}, "cache": false});
        let (status, answer) = server.post("/api/optimized/predict", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let before = gate(&server.stats().await);
    for _ in 0..20 {
        let body = json!({"model": "mlp", "inputs": {"features": tensor(&[1, 64], "FP32", json!(features))}, "cache": false});
        let (status, answer) = server.post("/api/optimized/predict", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(
        gate(&server.stats().await),
        before,
        "MLP runs took the gate"
    );

    // 32 UNet requests at once, one item a run on two replicas, through the
    // binary extension: bodies read in microseconds even in a debug build,
    // so the queue fills and both replicas run at once.
    let image: Vec<u8> = crate::common::noise(7, 3 * 128 * 128)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let header = json!({"inputs": [{"name": "image", "shape": [1, 3, 128, 128], "datatype": "FP32",
        "parameters": {"binary_data_size": image.len()}}],
        "outputs": [{"name": "mask", "parameters": {"binary_data": true}}]});
    let answers = futures_util::future::join_all(
        (0..32).map(|_| server.post_binary("/v2/models/unet/infer", &header, &image)),
    )
    .await;
    for answer in answers {
        assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    }
    let after = gate(&server.stats().await);
    assert!(after.0 >= before.0 + 32, "{before:?} -> {after:?}");
    assert!(after.1 > before.1, "no run waited: {before:?} -> {after:?}");
    let page = server.metrics_page().await;
    let line = page
        .lines()
        .find(|l| l.starts_with("gantry_cpu_pool_gate_runs_total "))
        .unwrap_or_else(|| panic!("no gate series in {page}"));
    assert!(line.ends_with(&format!(" {}", after.0)), "{line}");
    assert!(page.contains("gantry_cpu_pool_gate_wait_seconds_total "));
}
