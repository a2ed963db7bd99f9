//! End to end through HTTP with real ONNX Runtime: predict by JSON and by
//! multipart on each demo model, every datatype, unbatched models, batching
//! of concurrent requests, and the KServe v2 endpoints.

use crate::common::{floats, noise, tensor, Repo, TestServer};
use gantry::media::npy::write_npy;
use gantry_actors::{DataType, Tensor};
use serde_json::{json, Value};

fn demo_repo() -> Repo {
    Repo::new().copy("models/unet-seg", "unet-seg", None).copy(
        "models/tiny-classifier",
        "tiny-classifier",
        None,
    )
}

async fn demo_server() -> TestServer {
    let repo = demo_repo();
    // Replicas have loaded their sessions once the server is ready, so the
    // temporary repository may go.
    TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await
}

async fn multipart(server: &TestServer, model: &str, npy: Vec<u8>) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("model", model.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(npy).file_name("input.npy"),
        );
    server.post_form(form).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_multipart_agree_on_each_demo_model() {
    let server = demo_server().await;
    let cases = [
        (
            "unet-seg",
            "image",
            vec![1, 3, 128, 128],
            "mask",
            vec![1, 1, 128, 128],
        ),
        (
            "tiny-classifier",
            "features",
            vec![1, 64],
            "logits",
            vec![1, 10],
        ),
    ];
    for (model, input, shape, output, out_shape) in cases {
        let values = noise(7, shape.iter().product());
        let body =
            json!({"model": model, "inputs": {input: tensor(&shape, "FP32", json!(values))}});
        let (status, by_json) = server.post("/api/optimized/predict", &body).await;
        assert_eq!(status, 200, "{by_json}");
        assert_eq!(by_json["model"], model);
        assert_eq!(by_json["model_version"].as_str().unwrap().len(), 64);
        assert_eq!(by_json["outputs"][output]["shape"], json!(out_shape));
        assert_eq!(by_json["outputs"][output]["datatype"], "FP32");
        for key in ["queue", "inference", "total"] {
            assert!(by_json["timings_ms"][key].as_f64().unwrap() >= 0.0);
        }
        assert!(by_json["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));

        let npy = write_npy(&Tensor::from_f32(shape.clone(), &values).unwrap());
        let (status, by_file) = multipart(&server, model, npy).await;
        assert_eq!(status, 200, "{by_file}");
        assert_eq!(
            by_file["outputs"], by_json["outputs"],
            "{model}: multipart and JSON differ"
        );

        // A single item without the batch dimension comes back without it.
        let npy = write_npy(&Tensor::from_f32(shape[1..].to_vec(), &values).unwrap());
        let (status, single) = multipart(&server, model, npy).await;
        assert_eq!(status, 200, "{single}");
        assert_eq!(single["outputs"][output]["shape"], json!(out_shape[1..]));
        assert_eq!(
            single["outputs"][output]["data"],
            by_json["outputs"][output]["data"]
        );
    }
    let (_, mask) = server
        .post(
            "/api/optimized/predict",
            &json!({"model": "unet-seg", "inputs": {"image": tensor(&[1, 3, 128, 128], "FP32", json!(noise(3, 49152)))}}),
        )
        .await;
    let probabilities = floats(&mask["outputs"]["mask"]["data"]);
    assert!(
        probabilities.iter().all(|p| (0.0..=1.0).contains(p)),
        "sigmoid output in [0, 1]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_equal_sequential_results() {
    let repo = Repo::new().copy(
        "models/unet-seg",
        "unet-seg",
        Some("replicas = 1\nmax_batch_size = 8\nbatch_window_ms = 100\n"),
    );
    // The same inputs are sent twice on purpose: the cache must not answer.
    let mut config = crate::common::config(repo.path());
    config.cache.enabled = false;
    let server = TestServer::ready(config, crate::common::onnx_provider()).await;
    // .npy uploads decode in microseconds, so the 16 requests really arrive
    // together and queue behind the first batch.
    let upload = |seed: u64| {
        write_npy(&Tensor::from_f32(vec![1, 3, 128, 128], &noise(seed, 49152)).unwrap())
    };
    let concurrent: Vec<Value> = futures_util::future::join_all((0..16).map(|seed| {
        let npy = upload(seed);
        let server = &server;
        async move {
            let (status, answer) = multipart(server, "unet-seg", npy).await;
            assert_eq!(status, 200, "{answer}");
            answer
        }
    }))
    .await;
    let sizes: Vec<u64> = concurrent
        .iter()
        .map(|a| a["batch_size"].as_u64().unwrap())
        .collect();
    assert!(
        sizes.iter().any(|&s| s > 1),
        "no batch larger than 1: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|&s| s <= 8),
        "batch above max_batch_size: {sizes:?}"
    );
    for (seed, batched) in concurrent.iter().enumerate() {
        let (_, alone) = multipart(&server, "unet-seg", upload(seed as u64)).await;
        assert_eq!(alone["batch_size"], 1);
        let a = floats(&alone["outputs"]["mask"]["data"]);
        let b = floats(&batched["outputs"]["mask"]["data"]);
        assert_eq!(
            a, b,
            "request {seed}: batched output differs from its output alone"
        );
    }
    let stats = server.stats().await;
    let batcher = &stats["model_pools"]["unet-seg"]["batcher"];
    assert_eq!(batcher["items"], 32);
    assert!(
        batcher["avg_batch_size"].as_f64().unwrap() > 1.0,
        "{batcher}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datatype_is_served_with_its_true_datatype() {
    let repo = Repo::new().copy("tests/fixtures/models/dtypes", "dtypes", None);
    let server = TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let body = json!({"model": "dtypes", "inputs": {
        "x_fp32": tensor(&[2, 2], "FP32", json!([1.5, -2.0, 0.25, 3.0])),
        "x_fp64": tensor(&[2, 2], "FP64", json!([[1e100, -2.0], [0.5, 3.0]])),
        "x_i32": tensor(&[2, 2], "INT32", json!([1, -2, 1000000, 3])),
        "x_i64": tensor(&[2, 2], "INT64", json!([1, -2, 4000000000000i64, 3])),
        "x_u8": tensor(&[2, 2], "UINT8", json!([0, 1, 254, 255])),
        "x_bool": tensor(&[2, 2], "BOOL", json!([true, false, false, true])),
    }});
    let (status, answer) = server.post("/api/optimized/predict", &body).await;
    assert_eq!(status, 200, "{answer}");
    let out = &answer["outputs"];
    let expect = [
        ("y_fp32", "FP32", json!([3.0, -4.0, 0.5, 6.0])),
        ("y_fp64", "FP64", json!([2e100, -4.0, 1.0, 6.0])),
        ("y_i32", "INT32", json!([2, -4, 2000000, 6])),
        ("y_i64", "INT64", json!([2, -4, 8000000000000i64, 6])),
        ("y_u8", "UINT8", json!([1, 2, 255, 0])),
        ("y_bool", "BOOL", json!([false, true, true, false])),
    ];
    for (name, datatype, data) in expect {
        assert_eq!(out[name]["datatype"], datatype, "{name}");
        assert_eq!(out[name]["shape"], json!([2, 2]), "{name}");
        assert_eq!(out[name]["data"], data, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_without_a_dynamic_batch_dimension_are_served_unbatched() {
    let repo = Repo::new()
        .copy("tests/fixtures/models/fixed", "fixed", None)
        .copy("tests/fixtures/models/scalar-in", "scalar-in", None);
    let server = TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let answers = futures_util::future::join_all((0..6).map(|i| {
        let server = &server;
        async move {
            let body = json!({"model": "fixed", "inputs": {"x": tensor(&[1, 4], "FP32", json!([i, 1, 2, 3]))}});
            server.post("/api/optimized/predict", &body).await
        }
    }))
    .await;
    for (i, (status, answer)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["batch_size"], 1);
        assert_eq!(
            floats(&answer["outputs"]["y"]["data"]),
            vec![3.0 * i as f64, 3.0, 6.0, 9.0]
        );
    }
    let (status, answer) = server
        .post(
            "/api/optimized/predict",
            &json!({"model": "scalar-in", "inputs": {"x": tensor(&[], "FP32", json!([41.5]))}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"]["y"]["shape"], json!([]));
    assert_eq!(answer["outputs"]["y"]["data"], json!([42.5]));
    let (status, answer) = server
        .post(
            "/api/optimized/predict",
            &json!({"model": "fixed", "inputs": {"x": tensor(&[2, 4], "FP32", json!(vec![0; 8]))}}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_different_image_sizes_never_share_a_batch() {
    let repo = Repo::new().copy(
        "tests/fixtures/models/dynamic-image",
        "dynamic-image",
        Some("max_batch_size = 8\nbatch_window_ms = 50\n"),
    );
    let server = TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let answers = futures_util::future::join_all((0..12).map(|i| {
        let server = &server;
        let (h, w) = if i % 2 == 0 { (5, 7) } else { (16, 9) };
        let values = noise(i as u64, h * w);
        async move {
            let body = json!({"model": "dynamic-image", "inputs": {"image": tensor(&[1, 1, h, w], "FP32", json!(values))}});
            let (status, answer) = server.post("/api/optimized/predict", &body).await;
            (status, answer, values, h, w)
        }
    }))
    .await;
    for (status, answer, values, h, w) in answers {
        assert_eq!(status, 200, "{answer}");
        let out = &answer["outputs"]["image_out"];
        assert_eq!(out["shape"], json!([1, 1, h, w]));
        let expected: Vec<f32> = values.iter().map(|v| v * 2.0 + 1.0).collect();
        let got: Vec<f32> = floats(&out["data"]).iter().map(|&v| v as f32).collect();
        assert_eq!(got, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_v2_metadata_ready_and_infer() {
    let server = demo_server().await;
    let (status, meta) = server.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "gantry");
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/unet-seg/ready",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, meta) = server.get("/v2/models/unet-seg").await;
    assert_eq!(status, 200);
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    assert_eq!(
        meta["inputs"],
        json!([{"name": "image", "datatype": "FP32", "shape": [-1, 3, 128, 128]}])
    );
    assert_eq!(
        meta["outputs"],
        json!([{"name": "mask", "datatype": "FP32", "shape": [-1, 1, 128, 128]}])
    );
    let version = meta["versions"][0].as_str().unwrap().to_string();
    let (status, _) = server
        .get(&format!("/v2/models/unet-seg/versions/{version}/ready"))
        .await;
    assert_eq!(status, 200);
    let (status, body) = server.get("/v2/models/unet-seg/versions/nope").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    let values = noise(11, 64 * 2);
    let infer = json!({
        "id": "req-42",
        "inputs": [{"name": "features", "shape": [2, 64], "datatype": "FP32", "data": values}],
        "outputs": [{"name": "logits"}]
    });
    let (status, v2) = server
        .post("/v2/models/tiny-classifier/infer", &infer)
        .await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["id"], "req-42");
    assert_eq!(v2["model_name"], "tiny-classifier");
    assert_eq!(v2["outputs"][0]["name"], "logits");
    assert_eq!(v2["outputs"][0]["shape"], json!([2, 10]));
    let predict = json!({"model": "tiny-classifier", "inputs": {"features": tensor(&[2, 64], "FP32", json!(values))}});
    let (_, rest) = server.post("/api/optimized/predict", &predict).await;
    assert_eq!(v2["outputs"][0]["data"], rest["outputs"]["logits"]["data"]);

    let unknown = json!({"inputs": infer["inputs"], "outputs": [{"name": "nope"}]});
    let (status, body) = server
        .post("/v2/models/tiny-classifier/infer", &unknown)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_input")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_v2_binary_tensor_extension() {
    let server = demo_server().await;
    let values = noise(5, 64);
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]
    });
    let r = server
        .post_binary("/v2/models/tiny-classifier/infer", &header, &raw)
        .await;
    assert_eq!(r.status(), 200);
    let json_len: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 40);
    assert!(head["outputs"][0].get("data").is_none());
    let logits = Tensor::new(DataType::Fp32, vec![1, 10], bytes[json_len..].to_vec()).unwrap();
    let predict = json!({"model": "tiny-classifier", "inputs": {"features": tensor(&[1, 64], "FP32", json!(values))}});
    let (_, rest) = server.post("/api/optimized/predict", &predict).await;
    let expected: Vec<f32> = floats(&rest["outputs"]["logits"]["data"])
        .iter()
        .map(|&v| v as f32)
        .collect();
    assert_eq!(logits.to_f32().unwrap(), expected);
}
