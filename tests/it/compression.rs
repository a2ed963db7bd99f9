//! Compressed request bodies over real HTTP: gzip and deflate bodies are
//! read as if sent plain (JSON predict and v2 infer), a compression bomb is
//! answered 413 without being inflated whole, a corrupt body 400, an
//! unknown encoding 415; infer answers are compressed when asked, other
//! answers never. The server keeps serving after each.

use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use serde_json::{json, Value};

use crate::common::{noise, tensor, Repo, TestServer};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn classify_body() -> Value {
    json!({"inputs": [tensor_v2(&noise(11, 64))]})
}

fn tensor_v2(data: &[f32]) -> Value {
    json!({"name": "features", "shape": [1, 64], "datatype": "FP32", "data": data})
}

async fn send(
    server: &TestServer,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("an answer")
}

async fn server(body_limit_mb: u64) -> (TestServer, Repo) {
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let mut config = crate::common::config(repo.path());
    config.server.body_limit_mb = body_limit_mb;
    (
        TestServer::ready(config, crate::common::onnx_provider()).await,
        repo,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_requests_read_as_plain_ones() {
    let (server, _repo) = server(64).await;
    let infer = "/v2/models/tiny-classifier/infer";
    let plain = serde_json::to_vec(&classify_body()).unwrap();
    let expected: Value = send(&server, infer, plain.clone(), &[])
        .await
        .json()
        .await
        .unwrap();
    for (encoding, body) in [("gzip", gzip(&plain)), ("deflate", zlib(&plain))] {
        let answer = send(&server, infer, body, &[("content-encoding", encoding)]).await;
        assert_eq!(answer.status(), 200, "{encoding}");
        let answer: Value = answer.json().await.unwrap();
        assert_eq!(answer["outputs"], expected["outputs"], "{encoding}");
    }
    // The JSON predict endpoint reads compressed bodies too.
    let predict = json!({"model": "tiny-classifier",
        "inputs": {"features": tensor(&[1, 64], "FP32", json!(noise(12, 64)))}});
    let body = gzip(&serde_json::to_vec(&predict).unwrap());
    let answer = send(
        &server,
        "/api/optimized/predict",
        body,
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_answers_are_compressed_when_asked_and_nothing_else_is() {
    let (server, _repo) = server(64).await;
    let infer = "/v2/models/tiny-classifier/infer";
    let plain = serde_json::to_vec(&classify_body()).unwrap();
    let asked = [("accept-encoding", "gzip")];
    let answer = send(&server, infer, plain, &asked).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-encoding"], "gzip");
    let packed = answer.bytes().await.unwrap();
    let mut text = String::new();
    GzDecoder::new(&packed[..])
        .read_to_string(&mut text)
        .unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["outputs"][0]["shape"], json!([1, 10]));
    // Metadata and errors stay plain whatever the client accepts.
    let meta = reqwest::Client::new()
        .get(server.url("/v2/models/tiny-classifier"))
        .header("accept-encoding", "gzip, deflate")
        .send()
        .await
        .unwrap();
    assert!(meta.headers().get("content-encoding").is_none());
    let missing = send(&server, "/v2/models/nope/infer", b"{}".to_vec(), &asked).await;
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().get("content-encoding").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_corrupt_bodies_and_unknown_encodings_get_clear_errors() {
    let (server, _repo) = server(1).await;
    let infer = "/v2/models/tiny-classifier/infer";
    // 256 MiB of JSON whitespace packs into about 250 KB, well under the
    // 1 MiB body limit; inflated it is far over it.
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(b"{\"inputs\": [").unwrap();
    let spaces = vec![b' '; 1 << 20];
    for _ in 0..256 {
        e.write_all(&spaces).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    for _ in 0..8 {
        let answer = send(
            &server,
            infer,
            bomb.clone(),
            &[("content-encoding", "gzip")],
        )
        .await;
        assert_eq!(answer.status(), 413);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "payload_too_large", "{body}");
    }
    let corrupt = send(
        &server,
        infer,
        b"not gzip".to_vec(),
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(corrupt.status(), 400);
    let body: Value = corrupt.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot be inflated"),
        "{body}"
    );
    let brotli = send(
        &server,
        infer,
        b"{}".to_vec(),
        &[("content-encoding", "br")],
    )
    .await;
    assert_eq!(brotli.status(), 415);
    // Still serving.
    let plain = serde_json::to_vec(&classify_body()).unwrap();
    assert_eq!(send(&server, infer, plain, &[]).await.status(), 200);
}
