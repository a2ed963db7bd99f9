//! Numbers that JSON cannot carry or a datatype cannot hold, end to end
//! through HTTP with real ONNX Runtime: NaN and infinities come back as
//! the strings "NaN", "Infinity" and "-Infinity" in JSON (and as their IEEE
//! bytes in the binary extension), and values that do not fit the input's
//! datatype are refused with 422 `invalid_input`.

use crate::common::{tensor, Repo, TestServer};
use serde_json::{json, Value};

async fn server() -> TestServer {
    let repo = Repo::new()
        .copy("tests/fixtures/models/nonfinite", "nonfinite", None)
        .copy("tests/fixtures/models/dtypes", "dtypes", None);
    TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await
}

fn v2_input(data: Value) -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": data}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_and_infinities_are_answered_never_as_null() {
    let server = server().await;
    // x / 0: +Inf, -Inf, NaN and +Inf, in float32 and float64.
    let expected = json!(["Infinity", "-Infinity", "NaN", "Infinity"]);
    let (status, answer) = server
        .post(
            "/v2/models/nonfinite/infer",
            &v2_input(json!([1.0, -2.0, 0.0, 3.0])),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    for output in answer["outputs"].as_array().unwrap() {
        assert_eq!(output["data"], expected, "{output}");
    }
    let predict = json!({"model": "nonfinite", "inputs": {"x": tensor(&[1, 4], "FP32", json!([1, -2, 0, 3]))}});
    let (status, answer) = server.post("/api/optimized/predict", &predict).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"]["y"]["data"], expected, "{answer}");
    assert_eq!(answer["outputs"]["y64"]["data"], expected, "{answer}");

    // The strings are accepted back: a NaN or infinity input divided by 0.
    let (status, answer) = server
        .post(
            "/v2/models/nonfinite/infer",
            &v2_input(json!(["NaN", "-Infinity", "Infinity", -1.0])),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["outputs"][0]["data"],
        json!(["NaN", "-Infinity", "Infinity", "-Infinity"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_extension_carries_nan_and_infinities_as_ieee_bytes() {
    let server = server().await;
    let values = [f32::NAN, f32::NEG_INFINITY, 5.0, 0.0];
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [
            {"name": "y", "parameters": {"binary_data": true}},
            {"name": "y64", "parameters": {"binary_data": true}}
        ]
    });
    let r = server
        .post_binary("/v2/models/nonfinite/infer", &header, &raw)
        .await;
    assert_eq!(r.status(), 200);
    let json_len: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let (head, data) = bytes.split_at(json_len);
    let head: Value = serde_json::from_slice(head).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 16);
    assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 32);
    let y: Vec<f32> = data[..16]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let y64: Vec<f64> = data[16..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(y[0].is_nan() && y64[0].is_nan(), "{y:?} {y64:?}");
    assert!(y[3].is_nan() && y64[3].is_nan(), "{y:?} {y64:?}");
    assert_eq!(y[1..3], [f32::NEG_INFINITY, f32::INFINITY]);
    assert_eq!(y64[1..3], [f64::NEG_INFINITY, f64::INFINITY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_do_not_fit_the_datatype_are_422() {
    let server = server().await;
    let expect_422 = |answer: &Value, needles: &[&str]| {
        assert_eq!(answer["code"], "invalid_input", "{answer}");
        let message = answer["error"].as_str().unwrap();
        for needle in needles {
            assert!(message.contains(needle), "{message} lacks {needle}");
        }
    };
    let fp32 = [
        "input 'x'",
        "the value 1e39 at index 2 is out of range for FP32",
        "-3.4028235e38 to 3.4028235e38",
    ];
    let (status, answer) = server
        .post(
            "/v2/models/nonfinite/infer",
            &v2_input(json!([0.0, 1.0, 1e39, 2.0])),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    expect_422(&answer, &fp32);
    let predict = json!({"model": "nonfinite", "inputs": {"x": tensor(&[1, 4], "FP32", json!([[0, 1, 1e39, 2]]))}});
    let (status, answer) = server.post("/api/optimized/predict", &predict).await;
    assert_eq!(status, 422, "{answer}");
    expect_422(&answer, &fp32);

    let cases = [
        (
            "x_u8",
            "UINT8",
            json!([1, -1]),
            "-1 at index 1 is out of range for UINT8 (0 to 255)",
        ),
        (
            "x_i32",
            "INT32",
            json!([2147483648i64, 0]),
            "2147483648 at index 0 is out of range for INT32",
        ),
        (
            "x_i64",
            "INT64",
            json!([0, 1.5]),
            "1.5 at index 1 is not a whole number, as needed by INT64",
        ),
        (
            "x_bool",
            "BOOL",
            json!([true, 2]),
            "2 at index 1 is not a value of BOOL",
        ),
    ];
    for (name, datatype, data, needle) in cases {
        let body = json!({"inputs": [{"name": name, "shape": [1, 2], "datatype": datatype, "data": data}]});
        let (status, answer) = server.post("/v2/models/dtypes/infer", &body).await;
        assert_eq!(status, 422, "{answer}");
        expect_422(&answer, &[&format!("input '{name}'"), needle]);
    }
    // Binary BOOL data holds bytes 0 or 1, nothing else.
    let header = json!({"inputs": [{"name": "x_bool", "shape": [1, 2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}]});
    let r = server
        .post_binary("/v2/models/dtypes/infer", &header, &[1, 2])
        .await;
    assert_eq!(r.status(), 422);
    let answer: Value = r.json().await.unwrap();
    expect_422(
        &answer,
        &[
            "input 'x_bool'",
            "the byte 2 at index 1 is not a value of BOOL",
        ],
    );
    // The server keeps serving.
    let (status, answer) = server
        .post("/v2/models/nonfinite/infer", &v2_input(json!([1, 1, 1, 1])))
        .await;
    assert_eq!(status, 200, "{answer}");
}
