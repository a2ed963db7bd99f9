//! Where replicas run, seen from outside: a model that asks for a GPU on a
//! machine without a usable one is not ready and says why while the others
//! serve (with the real ONNX Runtime CPU library); `device = "auto"` serves
//! on the CPU; and with a fixed inventory of two GPUs (fake engines, which
//! run wherever they are put) replicas spread over both, each device has
//! its budget in stats, and `/metrics` labels it.

use std::sync::Arc;

use crate::common::{Repo, TestServer};
use gantry_actors::device::FixedInventory;
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::{json, Value};

fn replicas(stats: &Value, model: &str) -> Vec<Value> {
    stats["model_pools"][model]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_model_without_a_gpu_is_not_ready_and_says_why() {
    let repo = Repo::new()
        .copy(
            "models/tiny-classifier",
            "on-gpu",
            Some("device = \"gpu\"\n"),
        )
        .copy(
            "models/tiny-classifier",
            "anywhere",
            Some("device = \"auto\"\n"),
        );
    let server = TestServer::start(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    );
    // The auto model serves on the CPU.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let stats = loop {
        let stats = server.stats().await;
        if stats["model_pools"]["anywhere"]["ready"] == true {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "auto never became ready: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(replicas(&stats, "anywhere")[0]["device"], "cpu");
    // The GPU model is refused with what is missing: this machine has no
    // NVIDIA driver, and its ONNX Runtime is the CPU build.
    let refused = &replicas(&stats, "on-gpu")[0];
    assert_eq!(refused["state"], "refused", "{stats}");
    assert_eq!(refused["device"], Value::Null);
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("device = \"gpu\" but no GPU is usable: "),
        "{reason}"
    );
    assert!(
        reason.contains("NVML") || reason.contains("CUDA execution provider"),
        "{reason}"
    );
    assert_eq!(stats["memory"]["refused"][0]["replica"], "on-gpu/0");
    // Only the CPU has a budget here.
    let devices = stats["memory"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["device"], "cpu");
    assert_eq!(devices[0]["total_mb"], stats["memory"]["total_mb"]);
    assert_eq!(devices[0]["source"], "config");
    // Health names the model that is not ready; the other serves.
    let (status, health) = server.get("/api/optimized/health").await;
    assert_eq!(status, 503, "{health}");
    assert!(health.to_string().contains("on-gpu"), "{health}");
    let body = json!({"model": "anywhere", "inputs": {"features": crate::common::tensor(&[1, 64], "FP32", json!(vec![0.5; 64]))}});
    let (status, answer) = server.post("/api/optimized/predict", &body).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = server
        .post(
            "/api/optimized/predict",
            &json!({"model": "on-gpu", "inputs": body["inputs"]}),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_over_two_gpus_and_each_device_reports() {
    let repo = Repo::new()
        .fake("seg", "replicas = 4\nmemory_mb = 1000\n")
        .fake(
            "second-gpu",
            "device = \"gpu\"\ngpus = [1]\nmemory_mb = 500\n",
        )
        .fake("cpu-only", "device = \"cpu\"\nmemory_mb = 100\n");
    let mut provider = FakeProvider::new(FakeEngineFactory::vector(4));
    provider.gpu_support = Ok(());
    let gpus = Arc::new(FixedInventory::with_gpus(&[8000, 8000]));
    let mut config = crate::common::config(repo.path());
    config.memory.gpu_fraction = 0.5;
    let server = TestServer::start_with_gpus(config, Arc::new(provider), Some(gpus));
    server.wait_ready().await;
    let stats = server.stats().await;
    let devices = |model: &str| -> Vec<String> {
        replicas(&stats, model)
            .iter()
            .map(|r| r["device"].as_str().unwrap_or("none").to_string())
            .collect::<Vec<_>>()
    };
    let mut seg = devices("seg");
    seg.sort();
    assert_eq!(seg, ["gpu:0", "gpu:0", "gpu:1", "gpu:1"], "{stats}");
    assert_eq!(devices("second-gpu"), ["gpu:1"]);
    assert_eq!(devices("cpu-only"), ["cpu"]);
    let budgets: Vec<(String, u64, u64)> = stats["memory"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let mb = |key: &str| d[key].as_u64().unwrap();
            (
                d["device"].as_str().unwrap().to_string(),
                mb("total_mb"),
                mb("reserved_mb"),
            )
        })
        .collect();
    assert_eq!(
        budgets,
        [
            ("cpu".to_string(), 8192, 100),
            ("gpu:0".to_string(), 4000, 2000),
            ("gpu:1".to_string(), 4000, 2500),
        ]
    );
    assert_eq!(stats["memory"]["devices"][1]["source"], "nvml");
    // The top level is the CPU's budget, as before.
    assert_eq!(stats["memory"]["reserved_mb"], 100);
    let metrics = server.metrics_page().await;
    for line in [
        "gantry_memory_budget_total_bytes{device=\"gpu:1\"} 4194304000",
        "gantry_memory_budget_reserved_bytes{device=\"gpu:0\"} 2097152000",
        "gantry_memory_budget_free_bytes{device=\"cpu\"} 8485076992",
        "gantry_replica_device{model=\"second-gpu\",replica=\"0\",device=\"gpu:1\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}
