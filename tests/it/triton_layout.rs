//! A repository in Triton's layout (`config.pbtxt`, version folders) served
//! beside Gantry's own: the version the policy picks is the version clients
//! see and name in versioned routes, the configuration answers what the
//! file says (an input's `format`, an output's `label_filename`) over what
//! runs, its settings apply (instance count, batch size), a folder holding a
//! model Gantry cannot run is a failed model with the field named, and a
//! folder holding no model is none.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::{config, onnx_provider, root, Repo, TestServer};

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn copy(from: &str, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(root().join(from), to).unwrap();
}

const MLP_CONFIG: &str = r#"
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
  { name: "features"  data_type: TYPE_FP32  dims: [ 8, 8 ]  reshape { shape: [ 64 ] } }
]
output [
  { name: "logits"  data_type: TYPE_FP32  dims: [ 2, -1 ]  reshape { shape: [ 10 ] } }
]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [ { count: 2  kind: KIND_CPU } ]
"#;

const WARMUP_CONFIG: &str = r#"
max_batch_size: 8
model_warmup [
  { name: "zeros"  batch_size: 4  count: 2
    inputs { key: "features"  value: { data_type: TYPE_FP32  dims: [ 64 ]  zero_data: true } } },
  { name: "file"  batch_size: 1
    inputs { key: "features"  value: { data_type: TYPE_FP32  dims: [ 64 ]  input_data_file: "features.bin" } } }
]
"#;

const CLASSIFIER_CONFIG: &str = r#"
backend: "onnxruntime"
max_batch_size: 32
input [ { name: "features"  data_type: TYPE_FP32  format: FORMAT_NCHW  dims: [ 64 ] } ]
output [ { name: "logits"  data_type: TYPE_FP32  dims: [ 10 ]  label_filename: "labels.txt" } ]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triton_repository_is_served_as_its_configs_say() {
    let repo = Repo::new().copy("tests/fixtures/models/dtypes", "native", None);
    let dir = repo.path();
    write(dir, "mlp/config.pbtxt", MLP_CONFIG);
    copy(
        "models/tiny-classifier/model.onnx",
        &dir.join("mlp/1/model.onnx"),
    );
    copy(
        "models/tiny-classifier/model.onnx",
        &dir.join("mlp/3/model.onnx"),
    );
    write(dir, "classifier/config.pbtxt", CLASSIFIER_CONFIG);
    copy(
        "models/tiny-classifier/model.onnx",
        &dir.join("classifier/1/model.onnx"),
    );
    let labels: String = (0..10).map(|i| format!("class{i}\n")).collect();
    write(dir, "classifier/labels.txt", &labels);
    write(
        dir,
        "graphdef/config.pbtxt",
        "platform: \"tensorflow_graphdef\"\n",
    );
    write(dir, "graphdef/1/model.graphdef", "x");
    // The model's own warmup samples: zeros, and a file's bytes.
    write(dir, "warm/config.pbtxt", WARMUP_CONFIG);
    copy(
        "models/tiny-classifier/model.onnx",
        &dir.join("warm/1/model.onnx"),
    );
    write(dir, "warm/warmup/features.bin", &"\0".repeat(256));
    write(
        dir,
        "coldfile/config.pbtxt",
        &WARMUP_CONFIG.replace("features.bin", "missing.bin"),
    );
    copy(
        "models/tiny-classifier/model.onnx",
        &dir.join("coldfile/1/model.onnx"),
    );
    // No batch dimension, whatever the model's shapes: a tensor of any
    // first size runs as sent.
    write(
        dir,
        "nobatch/config.pbtxt",
        "max_batch_size: 0\ninput [ { name: \"features\" data_type: TYPE_FP32 dims: [ -1, 64 ] } ]\n",
    );
    copy(
        "models/tiny-classifier/model.onnx",
        &dir.join("nobatch/1/model.onnx"),
    );
    write(dir, "scripts/fetch.sh", "#!/bin/sh\n");
    let server = TestServer::start(config(dir), onnx_provider());
    server.wait_ready().await;

    let (status, index) = server.post("/v2/repository/index", &json!({})).await;
    assert_eq!(status, 200, "{index}");
    let entry = |name: &str| -> Value {
        index
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {index}"))
    };
    assert_eq!(entry("mlp")["version"], "3", "{index}");
    assert_eq!(entry("mlp")["state"], "READY");
    assert_eq!(entry("classifier")["version"], "1");
    assert_ne!(entry("graphdef")["state"], "READY");
    assert!(
        entry("graphdef")["reason"]
            .as_str()
            .unwrap()
            .contains("tensorflow_graphdef"),
        "{index}"
    );
    assert_eq!(entry("warm")["state"], "READY", "{index}");
    let reason = entry("coldfile")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("model_warmup 'file'") && reason.contains("missing.bin"),
        "{index}"
    );
    assert!(
        index
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "scripts"),
        "{index}"
    );

    let (status, metadata) = server.get("/v2/models/mlp").await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata["versions"], json!(["3"]));
    let (status, config) = server.get("/v2/models/mlp/versions/3/config").await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["max_batch_size"], 4);
    assert_eq!(config["instance_group"][0]["count"], 2, "{config}");
    assert_eq!(config["instance_group"][0]["kind"], "KIND_CPU");
    assert_eq!(
        config["dynamic_batching"]["max_queue_delay_microseconds"],
        2000
    );
    let (_, classifier) = server.get("/v2/models/classifier/config").await;
    assert_eq!(
        classifier["input"][0]["format"], "FORMAT_NCHW",
        "{classifier}"
    );
    assert_eq!(classifier["output"][0]["label_filename"], "labels.txt");
    assert_eq!(classifier["name"], "classifier");

    let features = |n: usize| json!({"name": "features", "shape": [n, 64], "datatype": "FP32", "data": vec![0.25; n * 64]});
    // The mlp's config reshapes: clients send 8 x 8 and get 2 x 5.
    assert_eq!(
        metadata["inputs"][0]["shape"],
        json!([-1, 8, 8]),
        "{metadata}"
    );
    assert_eq!(
        metadata["outputs"][0]["shape"],
        json!([-1, 2, -1]),
        "{metadata}"
    );
    let mut request = json!({"inputs": [features(2)]});
    request["inputs"][0]["shape"] = json!([2, 8, 8]);
    let (status, answer) = server
        .post("/v2/models/mlp/versions/3/infer", &request)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model_version"], "3");
    assert_eq!(answer["outputs"][0]["shape"], json!([2, 2, 5]), "{answer}");
    let (status, answer) = server
        .post("/v2/models/mlp/infer", &json!({"inputs": [features(2)]}))
        .await;
    assert_eq!(
        status, 422,
        "the configuration's shape, not the model's: {answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("[8, 8]"),
        "{answer}"
    );
    let (status, answer) = server
        .post(
            "/v2/models/nobatch/infer",
            &json!({"inputs": [features(12)]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([12, 10]), "{answer}");
    let (_, nobatch) = server.get("/v2/models/nobatch/config").await;
    assert_eq!(nobatch["max_batch_size"], 0, "{nobatch}");
    let (status, answer) = server
        .post("/v2/models/mlp/versions/1/infer", &request)
        .await;
    assert_eq!(status, 404, "version 1 is not served: {answer}");
    // Triton's classification extension names the labels file's classes.
    let classify = json!({
        "inputs": [features(1)],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}}],
    });
    let (status, answer) = server.post("/v2/models/classifier/infer", &classify).await;
    assert_eq!(status, 200, "{answer}");
    let top = answer["outputs"][0]["data"][0].as_str().unwrap();
    assert!(
        top.split(':').nth(2).unwrap().starts_with("class"),
        "{answer}"
    );
}

/// What clients read about models that cannot load (a load's answer, the
/// repository index, health) says "failed to load" as Triton does and names
/// files within the repository, never where the server keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_failures_are_worded_as_tritons_and_name_no_server_path() {
    let repo = Repo::new().copy("models/tiny-classifier", "good", None);
    let dir = repo.path();
    write(dir, "badtoml/model.toml", "replicas = -1\n");
    write(dir, "badtoml/model.onnx", "x");
    write(dir, "notonnx/model.onnx", "this is not an ONNX file");
    write(dir, "badpbtxt/config.pbtxt", "max_batch_size: \"eight\"\n");
    copy(
        "models/tiny-classifier/model.onnx",
        &dir.join("badpbtxt/1/model.onnx"),
    );
    // Not ready as a whole (a model's replicas keep failing), so the
    // wait is for the good model.
    let server = TestServer::start(config(dir), onnx_provider());
    for _ in 0..300 {
        if server.get("/v2/models/good/ready").await.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let root = dir.display().to_string();
    let canonical = std::fs::canonicalize(dir).unwrap().display().to_string();
    let no_path = |text: &str| !text.contains(&root) && !text.contains(&canonical);

    let (_, index) = server.post("/v2/repository/index", &json!({})).await;
    let index_text = index.to_string();
    assert!(no_path(&index_text), "{index_text}");
    assert!(index_text.contains("badtoml/model.toml"), "{index_text}");
    assert!(index_text.contains("badpbtxt/config.pbtxt"), "{index_text}");
    let (_, health) = server.get("/api/optimized/health").await;
    assert!(no_path(&health.to_string()), "{health}");

    for (model, says) in [
        ("badtoml", "badtoml/model.toml"),
        ("badpbtxt", "badpbtxt/config.pbtxt"),
        ("notonnx", "notonnx/model.onnx"),
    ] {
        let (status, answer) = server
            .post(&format!("/v2/repository/models/{model}/load"), &json!({}))
            .await;
        assert_eq!(status, 400, "{model}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("failed to load '{model}', ")),
            "{error}"
        );
        assert!(error.contains(says) && no_path(error), "{error}");
    }
    // A malformed override, as a Triton client sends it.
    let (status, answer) = server
        .post(
            "/v2/repository/models/good/load",
            &json!({"parameters": {"config": "{\"max_batch_size\": \"many\"}"}}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.starts_with("failed to load 'good', "), "{error}");
    // Integers as protobuf's JSON mapping writes them load.
    let (status, answer) = server
        .post(
            "/v2/repository/models/good/load",
            &json!({"parameters": {"config": "{\"max_batch_size\": \"16\"}"}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (_, config) = server.get("/v2/models/good/config").await;
    assert_eq!(config["max_batch_size"], 16, "{config}");
}

/// Triton's queue policy timeout is the model's own deadline: a request
/// that sets none is answered 504 past it, and one that sets a longer one
/// is held to it (allow_timeout_override only shortens); without
/// allow_timeout_override a request's own timeout is not used at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_policy_timeout_is_the_models_deadline() {
    let repo = Repo::new();
    let dir = repo.path();
    let policy = |allow: bool| {
        format!(
            "max_batch_size: 4\ndynamic_batching {{ default_queue_policy {{ \
             default_timeout_microseconds: 100000  allow_timeout_override: {allow} }} }}\n"
        )
    };
    for (name, allow) in [("capped", true), ("fixed", false)] {
        write(dir, &format!("{name}/config.pbtxt"), &policy(allow));
        write(dir, &format!("{name}/1/model.onnx"), "fake");
    }
    // Each batch takes 400 ms on the fake engine.
    let server = TestServer::start(config(dir), crate::common::live::provider(400));
    server.wait_ready().await;
    let predict = |model: &str, timeout_ms: Option<u64>| {
        let mut body = crate::common::live::body(model, 1);
        if let Some(ms) = timeout_ms {
            body["timeout_ms"] = json!(ms);
        }
        body
    };
    for (model, timeout_ms) in [
        ("capped", None),
        ("capped", Some(5_000)),
        ("fixed", Some(5_000)),
    ] {
        let started = std::time::Instant::now();
        let (status, answer) = server
            .post("/api/optimized/predict", &predict(model, timeout_ms))
            .await;
        let took = started.elapsed();
        assert_eq!(status, 504, "{model} {timeout_ms:?}: {answer}");
        assert!(
            took < std::time::Duration::from_millis(350),
            "{model}: {took:?}"
        );
    }
    // A shorter timeout than the policy's is the request's own where the
    // policy allows it, and not where it does not (no answer before the
    // policy's 100 ms).
    let started = std::time::Instant::now();
    let (status, answer) = server
        .post("/api/optimized/predict", &predict("capped", Some(20)))
        .await;
    assert_eq!(status, 504, "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(90),
        "the request's 20 ms, not the policy's 100 ms: {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let (status, answer) = server
        .post("/api/optimized/predict", &predict("fixed", Some(20)))
        .await;
    assert_eq!(status, 504, "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
}

/// Triton's `optional: true` on an input the ONNX model lets a caller
/// override (an initializer that is also a graph input): a request that
/// leaves it out runs on the model's own value, one that gives it on its
/// own, and the two kinds arriving together each get theirs (they never
/// share a batch). An optional input the model does not have fails the
/// load, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_input_left_out_runs_on_the_models_own_value() {
    let repo = Repo::new();
    let dir = repo.path();
    let fixture = "tests/fixtures/triton_optional/offset";
    for name in ["offset", "gain"] {
        copy(
            &format!("{fixture}/1/model.onnx"),
            &dir.join(format!("{name}/1/model.onnx")),
        );
    }
    let offset_config = std::fs::read_to_string(root().join(fixture).join("config.pbtxt")).unwrap();
    write(dir, "offset/config.pbtxt", &offset_config);
    write(
        dir,
        "gain/config.pbtxt",
        &offset_config.replace("\"bias\"", "\"gain\""),
    );
    let server = TestServer::start(config(dir), onnx_provider());
    // The server is not ready while a model failed (as Triton's strict
    // readiness): wait for the index to say how each ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (offset, gain) = loop {
        let (_, index) = server.post("/v2/repository/index", &json!({})).await;
        let entry = |name: &str| {
            index
                .as_array()
                .and_then(|a| a.iter().find(|e| e["name"] == name).cloned())
                .unwrap_or_default()
        };
        let (offset, gain) = (entry("offset"), entry("gain"));
        let gain_failed = gain["reason"]
            .as_str()
            .is_some_and(|r| r.contains("optional input"));
        if offset["state"] == "READY" && gain_failed {
            break (offset, gain);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "offset READY and gain failed, in {index}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(offset["version"], "1");
    assert_ne!(gain["state"], "READY", "{gain}");
    assert!(
        gain["reason"]
            .as_str()
            .unwrap()
            .contains("optional input 'gain'"),
        "{gain}"
    );
    let (status, metadata) = server.get("/v2/models/offset").await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata["inputs"][1]["name"], "bias", "{metadata}");
    let (_, config) = server.get("/v2/models/offset/config").await;
    assert_eq!(config["input"][1]["optional"], true, "{config}");

    let x = |n: usize| json!({"name": "x", "shape": [n, 4], "datatype": "FP32", "data": vec![1.0; n * 4]});
    let bias = |n: usize| json!({"name": "bias", "shape": [n, 4], "datatype": "FP32", "data": vec![0.5; n * 4]});
    let without = json!({"inputs": [x(2)]});
    let with = json!({"inputs": [x(3), bias(3)]});
    // Arriving together within the 20 ms window: each gets its own.
    let answers = futures_util::future::join_all((0..8).map(|i| {
        let body = if i % 2 == 0 { &without } else { &with };
        server.post("/v2/models/offset/infer", body)
    }))
    .await;
    for (i, (status, answer)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "{answer}");
        let expected = if i % 2 == 0 {
            json!([11.0, 21.0, 31.0, 41.0, 11.0, 21.0, 31.0, 41.0])
        } else {
            json!(vec![1.5; 12])
        };
        assert_eq!(answer["outputs"][0]["data"], expected, "request {i}");
    }
    // A required input left out is still a clear 400-class error.
    let (status, answer) = server
        .post("/v2/models/offset/infer", &json!({"inputs": [bias(1)]}))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("missing input 'x'"),
        "{answer}"
    );
}
