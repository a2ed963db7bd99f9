//! Memory follows demand: a model that does not fit is available, not
//! refused. Its requests wait while the supervisor evicts idle replicas of
//! other models (never pinned, busy or too young ones) and loads it; a load
//! that fails or runs past a request's deadline answers that request; an
//! idle model with `min_replicas = 0` leaves memory and comes back. On the
//! fake engine (deterministic), and with ONNX Runtime: a repository three
//! times the budget where every model answers and the process's memory
//! stays within the budget.

use std::sync::Arc;
use std::time::Duration;

use crate::common::live::{body, no_cache, until};
use crate::common::{Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::Value;

/// A config with a CPU budget of `limit_mb` and replicas that may be
/// evicted once ready for `min_residency_s` seconds.
fn budget(repo: &Repo, limit_mb: u64, min_residency_s: u64) -> gantry::config::Config {
    let mut config = no_cache(crate::common::config(repo.path()));
    config.memory.limit_mb = limit_mb;
    config.memory.min_residency_ms = min_residency_s * 1000;
    config
}

/// Asks `model` for 2 x `value` + 1, with a deadline when `timeout_ms`.
async fn predict(
    server: &TestServer,
    model: &str,
    value: usize,
    timeout_ms: Option<u64>,
) -> (u16, Value) {
    let mut request = server
        .client
        .post(server.url("/api/optimized/predict"))
        .json(&body(model, value));
    if let Some(ms) = timeout_ms {
        request = request.header("x-request-timeout-ms", ms.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The residency decisions in stats with `action`.
fn decisions<'a>(stats: &'a Value, action: &str) -> Vec<&'a Value> {
    stats["residency"]["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["action"] == action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_that_do_not_fit_together_take_turns_and_every_request_is_answered() {
    // Room for one of three: each request for a model out of memory evicts
    // the idle one in memory.
    let repo = Repo::new()
        .fake("a", "memory_mb = 100\n")
        .fake("b", "memory_mb = 100\n")
        .fake("c", "memory_mb = 100\n");
    let server = TestServer::ready(budget(&repo, 100, 0), crate::common::live::provider(0)).await;
    let (status, health) = server.get("/api/optimized/health").await;
    assert_eq!(status, 200, "out of memory is not unavailable: {health}");
    let residency: Vec<&str> = ["a", "b", "c"]
        .iter()
        .map(|m| health["models"][m]["residency"].as_str().unwrap())
        .collect();
    assert_eq!(residency, ["resident", "cold", "cold"], "{health}");
    let (_, index) = server
        .post("/v2/repository/index", &serde_json::json!({}))
        .await;
    let b = index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "b")
        .unwrap();
    assert_eq!(b["state"], "READY");
    assert!(
        b["reason"].as_str().unwrap().contains("not in memory"),
        "{b}"
    );

    for round in 0..3 {
        for model in ["b", "c", "a"] {
            let (status, answer) = predict(&server, model, round, None).await;
            assert_eq!(status, 200, "round {round}, {model}: {answer}");
            assert_eq!(
                answer["outputs"]["y"]["data"][0].as_f64(),
                Some(2.0 * round as f64 + 1.0)
            );
        }
    }
    let stats = until(&server, "only a in memory", |s| {
        s["model_pools"]["a"]["residency"] == "resident"
            && s["memory"]["reserved_mb"] == 100
            && s["model_pools"]["b"]["residency"] == "cold"
    })
    .await;
    assert_eq!(stats["memory"]["refused"], serde_json::json!([]));
    assert!(decisions(&stats, "evict").len() >= 9, "{stats}");
    assert!(decisions(&stats, "load").len() >= 9, "{stats}");
    let eviction = decisions(&stats, "evict")[0]["reason"].as_str().unwrap();
    assert!(eviction.contains("makes room for b"), "{eviction}");
    let page = server.metrics_page().await;
    for series in [
        "gantry_residency_decisions_total{model=\"a\",action=\"evict\"} 3",
        "gantry_residency_decisions_total{model=\"b\",action=\"load\"} 3",
        "gantry_load_wait_duration_seconds_count{model=\"c\"} 3",
        "gantry_model_resident{model=\"a\"} 1",
        "gantry_model_resident{model=\"b\"} 0",
    ] {
        assert!(page.contains(series), "no `{series}` in:\n{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_never_loaded_is_loaded_for_its_metadata() {
    let repo = Repo::new()
        .fake("a", "memory_mb = 100\n")
        .fake("b", "memory_mb = 100\n");
    let server = TestServer::ready(budget(&repo, 100, 0), crate::common::live::provider(0)).await;
    let (status, metadata) = server.get("/v2/models/b").await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata["inputs"][0]["name"], "x");
    let stats = server.stats().await;
    assert_eq!(stats["model_pools"]["b"]["residency"], "resident");
    assert_eq!(stats["model_pools"]["a"]["residency"], "cold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_model_is_never_evicted_and_the_waiting_request_times_out() {
    let repo = Repo::new()
        .fake("pinned", "memory_mb = 100\nkeep_loaded = true\n")
        .fake("other", "memory_mb = 100\n");
    let server = TestServer::ready(budget(&repo, 100, 0), crate::common::live::provider(0)).await;
    let (status, answer) = predict(&server, "other", 1, Some(300)).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (504, Some("deadline_exceeded"))
    );
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("waiting for model 'other' to load"),
        "{error}"
    );
    let stats = server.stats().await;
    assert_eq!(stats["model_pools"]["pinned"]["residency"], "resident");
    assert_eq!(stats["model_pools"]["pinned"]["pinned"], true);
    assert!(decisions(&stats, "evict").is_empty(), "{stats}");
    let statuses = &stats["performance_metrics"]["models"]["other"]["statuses"];
    assert_eq!(statuses, &serde_json::json!({"504": 1}));
    // The pinned model still serves.
    assert_eq!(predict(&server, "pinned", 2, None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_replica_is_evicted_only_once_its_work_is_done() {
    let repo = Repo::new()
        .fake("busy", "memory_mb = 100\n")
        .fake("waiting", "memory_mb = 100\n");
    let mut fakes = FakeProvider::new(FakeEngineFactory::vector(4));
    let slow = FakeEngineFactory::vector(4).with_delay(Duration::from_millis(1500), Duration::ZERO);
    fakes.per_model.insert("busy".into(), slow);
    let server = TestServer::ready(budget(&repo, 100, 0), Arc::new(fakes)).await;
    let running = predict(&server, "busy", 1, None);
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        predict(&server, "waiting", 1, Some(400)).await
    };
    let ((slow_status, _), (status, answer)) = tokio::join!(running, meanwhile);
    assert_eq!(slow_status, 200);
    assert_eq!(
        (status, answer["code"].as_str()),
        (504, Some("deadline_exceeded"))
    );
    // Idle now: it makes room.
    let (status, answer) = predict(&server, "waiting", 2, None).await;
    assert_eq!(status, 200, "{answer}");
    let stats = server.stats().await;
    let evicted: Vec<&str> = decisions(&stats, "evict")
        .iter()
        .map(|d| d["model"].as_str().unwrap())
        .collect();
    assert_eq!(evicted, ["busy"], "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_younger_than_the_residency_floor_stays() {
    let repo = Repo::new()
        .fake("a", "memory_mb = 100\n")
        .fake("b", "memory_mb = 100\n");
    let mut config = budget(&repo, 100, 60);
    // The fixed floor alone (a fake model loads in a millisecond, so a
    // floor in load times would let it go at once).
    config.memory.min_residency_loads = 0;
    let server = TestServer::ready(config, crate::common::live::provider(0)).await;
    let (status, answer) = predict(&server, "b", 1, Some(300)).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (504, Some("deadline_exceeded"))
    );
    let stats = server.stats().await;
    assert_eq!(stats["residency"]["min_residency_ms"], 60_000);
    assert!(decisions(&stats, "evict").is_empty(), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_fails_answers_503_with_the_reason_and_gives_its_room_back() {
    let repo = Repo::new()
        .fake("a", "memory_mb = 100\n")
        .fake("broken", "memory_mb = 100\n");
    let mut fakes = FakeProvider::new(FakeEngineFactory::vector(4));
    let mut broken = FakeEngineFactory::vector(4);
    broken.failing_loads = usize::MAX;
    fakes.per_model.insert("broken".into(), broken);
    let server = TestServer::ready(budget(&repo, 100, 0), Arc::new(fakes)).await;
    let (status, answer) = predict(&server, "broken", 1, None).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("model_not_ready")),
        "{answer}"
    );
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("model 'broken' is not available"), "{error}");
    // The failed model's replica serves nothing: a takes its room back.
    let (status, answer) = predict(&server, "a", 2, None).await;
    assert_eq!(status, 200, "{answer}");
    let stats = until(&server, "broken out of memory", |s| {
        s["model_pools"]["broken"]["replicas"] == serde_json::json!([])
    })
    .await;
    assert_eq!(stats["memory"]["reserved_mb"], 100, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_model_with_min_replicas_0_leaves_memory_and_comes_back() {
    let repo = Repo::new()
        .fake(
            "idle",
            "replicas = 2\nmin_replicas = 0\ndownscale_delay_s = 1\n",
        )
        .fake("kept", "replicas = 2\ndownscale_delay_s = 1\n");
    let server = TestServer::ready(budget(&repo, 1000, 0), crate::common::live::provider(0)).await;
    assert_eq!(predict(&server, "idle", 1, None).await.0, 200);
    let stats = until(&server, "idle out of memory", |s| {
        s["model_pools"]["idle"]["residency"] == "cold"
    })
    .await;
    assert_eq!(decisions(&stats, "scale_down").len(), 2, "{stats}");
    assert!(
        decisions(&stats, "scale_down")
            .iter()
            .all(|d| d["model"] == "idle"),
        "min_replicas defaults to replicas: {stats}"
    );
    assert_eq!(
        stats["model_pools"]["kept"]["replicas"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let (status, health) = server.get("/v2/health/ready").await;
    assert_eq!(status, 200, "{health}");
    let (status, answer) = predict(&server, "idle", 3, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"]["y"]["data"][0].as_f64(), Some(7.0));
}

/// Resident memory of this process (the server runs in it), in MB.
fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024
}

/// Eight MLPs of about 10 MB each under a budget that holds two: every model
/// answers, twice round, and what the process holds stays within the
/// budget over what it held with the first two loaded. Models loaded on
/// demand map their weights from split copies, and answer as the copies
/// loaded at startup (prepacked) did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_models_three_times_the_budget_all_answer_within_it() {
    let repo = Repo::new();
    let script = "import sys, numpy as np, onnx\n\
        from onnx import helper, TensorProto, numpy_helper\n\
        rng = np.random.default_rng(3)\n\
        h = 1500\n\
        for i in range(8):\n\
        \x20   ws = [rng.standard_normal(s, dtype=np.float32) * 0.05 for s in [(64, h), (h, h), (h, 10)]]\n\
        \x20   inits = [numpy_helper.from_array(w, f'w{j}') for j, w in enumerate(ws)]\n\
        \x20   nodes = [helper.make_node('MatMul', ['features', 'w0'], ['a']), helper.make_node('Relu', ['a'], ['b']),\n\
        \x20            helper.make_node('MatMul', ['b', 'w1'], ['c']), helper.make_node('MatMul', ['c', 'w2'], ['logits'])]\n\
        \x20   g = helper.make_graph(nodes, 'mlp', [helper.make_tensor_value_info('features', TensorProto.FLOAT, ['n', 64])],\n\
        \x20                         [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['n', 10])], inits)\n\
        \x20   m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]); m.ir_version = 8\n\
        \x20   import os; d = os.path.join(sys.argv[1], f'mlp-{i}'); os.makedirs(d)\n\
        \x20   onnx.save(m, os.path.join(d, 'model.onnx'))\n";
    let python = std::env::var("GANTRY_TEST_PYTHON").unwrap_or_else(|_| {
        crate::common::root()
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    let made = std::process::Command::new(python)
        .args(["-c", script])
        .arg(repo.path())
        .status()
        .expect("python runs");
    assert!(made.success());
    // Each file holds 9.4 MB of weights, and a loaded, warmed replica
    // about that: two fit.
    let limit_mb = 25;
    let mut config = budget(&repo, limit_mb, 0);
    let copies = tempfile::tempdir().unwrap();
    config.memory.weights_dir = copies.path().display().to_string();
    let server = TestServer::ready(config, crate::common::onnx_provider()).await;
    let base = rss_mb();
    let features = crate::common::tensor(&[1, 64], "FP32", serde_json::json!(vec![0.5; 64]));
    let mut peak = base;
    let mut first = Vec::new();
    for round in 0..2 {
        for i in 0..8 {
            let model = format!("mlp-{i}");
            let body = serde_json::json!({"model": model, "cache": false, "inputs": {"features": features}});
            let (status, answer) = server.post("/api/optimized/predict", &body).await;
            assert_eq!(status, 200, "round {round}, {model}: {answer}");
            peak = peak.max(rss_mb());
            let logits: Vec<f64> = answer["outputs"]["logits"]["data"]
                .as_array()
                .unwrap_or_else(|| panic!("{answer}"))
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            if round == 0 {
                first.push(logits);
                continue;
            }
            // Loaded again on demand (mapped) vs the first load.
            for (a, b) in first[i].iter().zip(&logits) {
                assert!(
                    (a - b).abs() < 1e-3,
                    "{model}: {:?} vs {logits:?}",
                    first[i]
                );
            }
        }
    }
    let dir = gantry_actors::engine::mapped_weights::dir().expect("weights are mapped");
    let split = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("weights.bin").is_file())
        .count();
    assert!(split >= 6, "{split} split copies in {}", dir.display());
    let stats = server.stats().await;
    let reserved = stats["memory"]["reserved_mb"].as_u64().unwrap();
    assert!(reserved <= limit_mb, "{stats}");
    assert!(decisions(&stats, "evict").len() >= 12, "{stats}");
    // The last model asked for loaded on demand: its weights are mapped.
    assert_eq!(
        stats["model_pools"]["mlp-7"]["replicas"][0]["weights_mapped"], true,
        "{stats}"
    );
    // Without eviction (or with freed memory kept by the allocator) the
    // process would grow by the six other models, about 60 MB.
    assert!(
        peak <= base + limit_mb,
        "resident memory rose from {base} MB to {peak} MB, past the {limit_mb} MB budget: {stats}"
    );
}

/// Two GPUs of 1000 MB of budget, three GPU models of 1000 MB: each request
/// for the one out of memory evicts the idle model on one GPU and takes its
/// place there; the CPU's budget is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_gpus_each_eviction_makes_room_on_one_gpu() {
    let toml = "device = \"gpu\"\nmemory_mb = 1000\n";
    let repo = Repo::new()
        .fake("g-a", toml)
        .fake("g-b", toml)
        .fake("g-c", toml);
    let mut provider = FakeProvider::new(FakeEngineFactory::vector(4));
    provider.gpu_support = Ok(());
    let gpus = Arc::new(gantry_actors::device::FixedInventory::with_gpus(&[
        2000, 2000,
    ]));
    let mut config = budget(&repo, 1000, 0);
    config.memory.gpu_fraction = 0.5;
    let server = TestServer::start_with_gpus(config, Arc::new(provider), Some(gpus));
    server.wait_ready().await;
    let device = |stats: &Value, model: &str| -> Option<String> {
        stats["model_pools"][model]["replicas"][0]["device"]
            .as_str()
            .map(str::to_string)
    };
    let stats = server.stats().await;
    let mut placed = [device(&stats, "g-a"), device(&stats, "g-b")];
    placed.sort();
    assert_eq!(placed, [Some("gpu:0".into()), Some("gpu:1".into())]);
    assert_eq!(stats["model_pools"]["g-c"]["residency"], "cold");
    for (round, model) in ["g-c", "g-a", "g-b", "g-c", "g-a"].iter().enumerate() {
        let before = server.stats().await;
        let was_cold = before["model_pools"][model]["residency"] == "cold";
        let (status, answer) = predict(&server, model, round, None).await;
        assert_eq!(status, 200, "{model}: {answer}");
        let stats = until(&server, "one model per GPU", |s| {
            let gpus = &s["memory"]["devices"];
            gpus[1]["reserved_mb"] == 1000 && gpus[2]["reserved_mb"] == 1000
        })
        .await;
        let on = device(&stats, model).expect("placed");
        assert!(on.starts_with("gpu:"), "{stats}");
        let evicted = decisions(&stats, "evict");
        let earlier = decisions(&before, "evict").len();
        if was_cold {
            assert_eq!(evicted.len(), earlier + 1, "{stats}");
            let last = evicted[earlier]["reason"].as_str().unwrap();
            let wanted = format!("on {on}) makes room for {model}");
            assert!(last.contains(&wanted), "{model} on {on}: {last}");
        } else {
            assert_eq!(evicted.len(), earlier, "{stats}");
        }
        assert_eq!(stats["memory"]["devices"][0]["reserved_mb"], 0);
    }
}

/// A load slower than a request's deadline answers that request 504 (its
/// wait named) and goes on: the next request finds the model in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_slower_than_the_deadline_answers_504_and_the_next_request_is_served() {
    let repo = Repo::new()
        .fake("a", "memory_mb = 100\n")
        .fake("slow-load", "memory_mb = 100\n");
    let mut fakes = FakeProvider::new(FakeEngineFactory::vector(4));
    let mut slow = FakeEngineFactory::vector(4);
    slow.load_delay = Duration::from_millis(1500);
    fakes.per_model.insert("slow-load".into(), slow);
    let server = TestServer::ready(budget(&repo, 100, 0), Arc::new(fakes)).await;
    assert_eq!(predict(&server, "a", 1, None).await.0, 200);
    // "slow-load" never loaded: its first load takes 1.5 s.
    let (status, answer) = predict(&server, "slow-load", 1, Some(300)).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (504, Some("deadline_exceeded"))
    );
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("waiting for model 'slow-load' to load"),
        "{error}"
    );
    until(&server, "slow-load in memory", |s| {
        s["model_pools"]["slow-load"]["residency"] == "resident"
    })
    .await;
    let (status, answer) = predict(&server, "slow-load", 2, Some(300)).await;
    assert_eq!(status, 200, "{answer}");
    // Evicted meanwhile, "a" loads again for its next request.
    let (status, answer) = predict(&server, "a", 3, None).await;
    assert_eq!(status, 200, "{answer}");
}
