//! Every error status with its JSON body (`{"error", "code"}`) and an
//! `x-request-id`: 400, 404, 405, 413, 415, 422, 429, 500, 503, 504. The
//! server keeps serving after each.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{tensor, Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use reqwest::Response;
use serde_json::{json, Value};

fn provider() -> Arc<FakeProvider> {
    let mut provider = FakeProvider::new(FakeEngineFactory::vector(4));
    provider.per_model.insert(
        "slow".into(),
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(600), Duration::ZERO),
    );
    let mut broken = FakeEngineFactory::vector(4);
    broken.poison = Some(13.0);
    provider.per_model.insert("broken".into(), broken);
    Arc::new(provider)
}

async fn server() -> TestServer {
    let repo = Repo::new()
        .fake("m", "max_batch_size = 4\n")
        .fake("slow", "max_batch_size = 1\nqueue_capacity = 1\n")
        .fake("broken", "")
        .fake("refused", "memory_mb = 999999\n");
    let mut config = crate::common::config(repo.path());
    config.server.body_limit_mb = 1;
    let server = TestServer::start(config, provider());
    // Every model but "refused" becomes ready.
    for _ in 0..200 {
        let (_, health) = server.get("/api/optimized/health").await;
        let models = &health["models"];
        if ["m", "slow", "broken"]
            .iter()
            .all(|m| models[m]["ready"] == true)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

fn x(shape: &[usize], values: Value) -> Value {
    json!({"x": tensor(shape, "FP32", values)})
}

/// Checks status, JSON error shape, code and request id; returns the message.
async fn expect_error(response: Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert!(
        response.headers().contains_key("x-request-id"),
        "no x-request-id"
    );
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body["error"].as_str().expect("error message").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_has_a_json_body() {
    let server = server().await;
    let c = &server.client;
    let predict = server.url("/api/optimized/predict");
    let post = |body: Value| c.post(&predict).json(&body).send();

    // 400: malformed JSON, missing field, bad timeout header.
    let r = c
        .post(&predict)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert!(expect_error(r, 400, "bad_request")
        .await
        .contains("invalid JSON"));
    let r = post(json!({"inputs": {}})).await.unwrap();
    assert!(expect_error(r, 400, "bad_request").await.contains("model"));
    let r = c
        .post(&predict)
        .header("x-request-timeout-ms", "soon")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_request").await;

    // 404: unknown model (REST and v2) and unknown route.
    let r = post(json!({"model": "nope", "inputs": x(&[1, 4], json!([1, 2, 3, 4]))}))
        .await
        .unwrap();
    assert!(expect_error(r, 404, "model_not_found")
        .await
        .contains("'nope'"));
    let r = c.get(server.url("/v2/models/nope")).send().await.unwrap();
    expect_error(r, 404, "model_not_found").await;
    let r = c.get(server.url("/no/such/route")).send().await.unwrap();
    expect_error(r, 404, "not_found").await;

    // 405: a known route with the wrong method.
    let r = c.get(&predict).send().await.unwrap();
    expect_error(r, 405, "method_not_allowed").await;

    // 413: over body_limit_mb (1 MiB), JSON and multipart.
    let r = c
        .post(&predict)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "payload_too_large").await;
    let form = reqwest::multipart::Form::new()
        .text("model", "m")
        .part("file", reqwest::multipart::Part::bytes(vec![0u8; 2 << 20]));
    let r = c.post(&predict).multipart(form).send().await.unwrap();
    expect_error(r, 413, "payload_too_large").await;

    // 415: a content type we do not read, and an upload that is not .npy.
    let r = c
        .post(&predict)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "unsupported_media_type").await;
    let form = reqwest::multipart::Form::new().text("model", "m").part(
        "file",
        reqwest::multipart::Part::bytes(b"\x89PNG\r\n".to_vec()),
    );
    let r = c.post(&predict).multipart(form).send().await.unwrap();
    assert!(expect_error(r, 415, "unsupported_media_type")
        .await
        .contains(".npy"));

    // 422: wrong input name, datatype, shape, value count, batch too large.
    let cases = [
        (
            json!({"y": tensor(&[1, 4], "FP32", json!([1, 2, 3, 4]))}),
            "unknown input 'y'",
        ),
        (
            json!({"x": tensor(&[1, 4], "INT32", json!([1, 2, 3, 4]))}),
            "datatype INT32",
        ),
        (x(&[1, 5], json!([1, 2, 3, 4, 5])), "has shape [1, 5]"),
        (x(&[1, 4], json!([1, 2, 3])), "needs 4 values"),
        (x(&[5, 4], json!(vec![0; 20])), "max_batch_size 4"),
        (
            json!({"x": tensor(&[1, 4], "FP8", json!([1, 2, 3, 4]))}),
            "'FP8' is not supported",
        ),
    ];
    for (inputs, needle) in cases {
        let r = post(json!({"model": "m", "inputs": inputs})).await.unwrap();
        let message = expect_error(r, 422, "invalid_input").await;
        assert!(message.contains(needle), "{message} lacks {needle}");
    }

    // 500: the engine fails.
    let r = post(json!({"model": "broken", "inputs": x(&[1, 4], json!([1, 2, 13, 4]))}))
        .await
        .unwrap();
    assert!(expect_error(r, 500, "inference_failed")
        .await
        .contains("refuses the value 13"));

    // 503: no replica fits the memory budget.
    let r = post(json!({"model": "refused", "inputs": x(&[1, 4], json!([1, 2, 3, 4]))}))
        .await
        .unwrap();
    expect_error(r, 503, "model_not_ready").await;

    // 504: the deadline passes while the slow engine runs.
    let r =
        post(json!({"model": "slow", "timeout_ms": 50, "inputs": x(&[1, 4], json!([1, 2, 3, 4]))}))
            .await
            .unwrap();
    expect_error(r, 504, "deadline_exceeded").await;

    // The server is still serving.
    let (status, answer) = server
        .post(
            "/api/optimized/predict",
            &json!({"model": "m", "inputs": x(&[1, 4], json!([1, 2, 3, 4]))}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after_and_nothing_is_lost() {
    let server = server().await;
    // "slow": one item per batch, 600 ms each, queue of 1. One runs, one
    // waits at the replica, one waits in the queue; the rest are refused.
    let responses = futures_util::future::join_all((0..8).map(|i| {
        let server = &server;
        async move {
            let body = json!({"model": "slow", "inputs": x(&[1, 4], json!([i, 0, 0, 0]))});
            server
                .client
                .post(server.url("/api/optimized/predict"))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    }))
    .await;
    let mut ok = 0;
    let mut refused = 0;
    for r in responses {
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(r.headers()["retry-after"], "1");
                expect_error(r, 429, "queue_full").await;
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok + refused, 8, "every request got exactly one answer");
    assert!(refused >= 1 && ok >= 2, "ok {ok}, refused {refused}");
    let stats = server.stats().await;
    let batcher = &stats["model_pools"]["slow"]["batcher"];
    assert_eq!(batcher["items"].as_u64(), Some(ok));
    let (status, _) = server.get("/api/optimized/health").await;
    assert_eq!(
        status, 503,
        "'refused' has no replica, by design of this fixture"
    );
    let (status, answer) = server
        .post(
            "/api/optimized/predict",
            &json!({"model": "slow", "inputs": x(&[1, 4], json!([1, 2, 3, 4]))}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_request_ids_are_echoed_and_others_generated() {
    let server = server().await;
    let r = server
        .client
        .get(server.url("/v2/health/live"))
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-123");
    let body = json!({"model": "m", "inputs": x(&[1, 4], json!([1, 2, 3, 4]))});
    let r = server
        .client
        .post(server.url("/api/optimized/predict"))
        .header("x-request-id", "trace-456")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-456");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["request_id"], "trace-456");
    let r = server
        .client
        .get(server.url("/v2/health/live"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(
        generated.len(),
        36,
        "a UUID replaces an unusable id: {generated}"
    );
}
