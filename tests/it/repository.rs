//! Model names are names: the repository API refuses (400) every name that
//! is not one (`.`, `..`, their percent-encoded forms, separators, names the
//! scan skips, overlong ones) and every folder that resolves outside
//! `models.dir` (a symbolic link out), before reading anything; a refused
//! name leaves no trace in health's `failed_models` or the repository index.
//! A well-formed name with no folder is 404, as for any unknown model.

use std::io::{Read, Write};
use std::path::Path;

use crate::common::live::{admin, body, no_cache, provider};
use crate::common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

/// Sends `method path` as written, with an empty JSON body: HTTP clients
/// normalise `.` and `..` segments (and `%2e%2e`) away before sending.
async fn raw(server: &TestServer, method: &str, path: &str) -> (u16, Value) {
    raw_with(server, method, path, "{}").await
}

/// [`raw`] with a JSON body.
async fn raw_with(server: &TestServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    let addr = server.base.trim_start_matches("http://").to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    })
    .await
    .unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {answer}"));
    (status, body)
}

fn fake_model(folder: &Path) {
    std::fs::create_dir_all(folder).unwrap();
    std::fs::write(folder.join("model.onnx"), "fake model").unwrap();
    std::fs::write(folder.join("model.toml"), "memory_mb = 100\n").unwrap();
}

/// The names of the repository index's entries.
async fn index(server: &TestServer) -> Vec<String> {
    let (status, index) = admin(server, Method::POST, "/v2/repository/index", None).await;
    assert_eq!(status, 200, "{index}");
    let entries = index.as_array().unwrap_or_else(|| panic!("{index}"));
    entries
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_model_names_are_refused_and_leave_no_trace() {
    // A model right above models.dir, and one beside it that a link in
    // models.dir points to: neither may be served.
    let outer = tempfile::tempdir().unwrap();
    fake_model(outer.path());
    fake_model(&outer.path().join("secret"));
    let models = outer.path().join("models");
    fake_model(&models.join("a"));
    let server = TestServer::ready(no_cache(crate::common::config(&models)), provider(0)).await;
    std::os::unix::fs::symlink(outer.path().join("secret"), models.join("evil")).unwrap();
    let before = server.stats().await;

    let long = "n".repeat(200);
    let refused = [
        "..",
        ".",
        "%2e%2e",
        "%2E.",
        "..%2F..",
        "..%2F..%2Fmodels%2Fa",
        "a%2F..%2F..",
        "%2Fetc",
        "a%5Cb",
        ".hidden",
        "_private",
        "a%20b",
        "%00",
        &long,
    ];
    for name in refused {
        for action in ["load", "unload"] {
            let path = format!("/v2/repository/models/{name}/{action}");
            let (status, answer) = raw(&server, "POST", &path).await;
            assert_eq!(
                (status, answer["code"].as_str()),
                (400, Some("bad_request")),
                "{path}: {answer}"
            );
        }
        let path = format!("/api/optimized/models/{name}/replicas");
        let (status, answer) = raw_with(&server, "PUT", &path, r#"{"replicas": 2}"#).await;
        assert_eq!(status, 400, "{path}: {answer}");
        // The v2 routes only look names up: an unknown model.
        for (method, path) in [
            ("GET", format!("/v2/models/{name}")),
            ("GET", format!("/v2/models/{name}/ready")),
            ("POST", format!("/v2/models/{name}/infer")),
        ] {
            let (status, answer) = raw(&server, method, &path).await;
            assert_eq!(status, 404, "{method} {path}: {answer}");
            assert!(answer["code"].is_string(), "{method} {path}: {answer}");
        }
    }
    let (status, answer) = raw(&server, "POST", "/v2/repository/models/../load").await;
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not a model name"),
        "{status} {answer}"
    );
    // `evil` is a name, but its folder is a link out of models.dir: it is
    // not loaded; as it is not served, unloading or scaling it is a 404.
    let (status, answer) = raw(&server, "POST", "/v2/repository/models/evil/load").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("outside models.dir"),
        "{answer}"
    );
    let (status, _) = raw(&server, "POST", "/v2/repository/models/evil/unload").await;
    assert_eq!(status, 404);

    // A well-formed name without a folder is an unknown model.
    let (status, answer) = admin(
        &server,
        Method::POST,
        "/v2/repository/models/nope/load",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("model_not_found"))
    );

    // No trace: health and the index show only the model there is, and the
    // budget holds what it held.
    let (status, health) = server.get("/api/optimized/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["failed_models"], json!({}), "{health}");
    assert_eq!(health["models"].as_object().unwrap().len(), 1, "{health}");
    assert_eq!(index(&server).await, ["a"]);
    assert_eq!(server.stats().await["memory"], before["memory"]);
    let (status, _) = server.post("/api/optimized/predict", &body("a", 1)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_that_fails_is_reported_until_it_is_gone() {
    let outer = tempfile::tempdir().unwrap();
    let models = outer.path().join("models");
    fake_model(&models.join("a"));
    let server = TestServer::ready(no_cache(crate::common::config(&models)), provider(0)).await;
    // A real folder that cannot be served is reported, as Triton's index does.
    fake_model(&models.join("broken"));
    std::fs::write(models.join("broken/model.toml"), "replicas = \"two\"\n").unwrap();
    let load = "/v2/repository/models/broken/load";
    let (status, answer) = admin(&server, Method::POST, load, Some(json!({}))).await;
    assert_eq!(status, 400, "{answer}");
    let (_, health) = server.get("/api/optimized/health").await;
    assert!(
        health["failed_models"]["broken"]
            .as_str()
            .is_some_and(|why| why.contains("replicas")),
        "{health}"
    );
    assert_eq!(index(&server).await, ["a", "broken"]);
    // Once the folder is gone, loading it is a 404 and the failure goes.
    std::fs::remove_dir_all(models.join("broken")).unwrap();
    let (status, _) = admin(&server, Method::POST, load, Some(json!({}))).await;
    assert_eq!(status, 404);
    let (_, health) = server.get("/api/optimized/health").await;
    assert_eq!(health["failed_models"], json!({}), "{health}");
    assert_eq!(index(&server).await, ["a"]);

    // A link out of models.dir found by a reload is reported, not served.
    fake_model(&outer.path().join("secret"));
    std::os::unix::fs::symlink(outer.path().join("secret"), models.join("evil")).unwrap();
    let (status, report) = admin(&server, Method::POST, "/api/optimized/reload", None).await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["failed_models"]["evil"]
            .as_str()
            .is_some_and(|why| why.contains("outside models.dir")),
        "{report}"
    );
    let (status, _) = server.get("/v2/models/evil").await;
    assert_eq!(status, 404);
}
