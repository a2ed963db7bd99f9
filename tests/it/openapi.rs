//! The OpenAPI description against the real server. `GET /openapi.json`
//! describes every route; schemathesis (pinned in
//! tests/clients/requirements.txt) generates requests from it, valid and
//! invalid, for every operation, and checks each answer:
//! - `not_a_server_error`: no 5xx (but 504, which is the client's own
//!   deadline passing: a 1 ms `x-request-timeout-ms` is valid input);
//! - `status_code_conformance`: the status is one the route documents;
//! - `content_type_conformance`: the content type is the documented one
//!   (every error is `application/json`);
//! - `response_schema_conformance`: the body matches the documented schema
//!   (every error is `{"error": "...", "code": "..."}`).
//!
//! The run is bounded (examples per operation, a fixed seed, deterministic
//! generation) and afterwards the server must still be ready and still
//! predict. The admin routes are fuzzed without the admin token (401s), so
//! the run cannot unload the models it is testing.
//!
//! The interpreter is `GANTRY_TEST_PYTHON` (set by `make test`), else
//! `.venv/bin/python`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

/// The Python interpreter with schemathesis installed.
fn python() -> PathBuf {
    let path = std::env::var_os("GANTRY_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::common::root().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "no Python for schemathesis at {}; run `make venv` (or `make test`, which sets \
         GANTRY_TEST_PYTHON)",
        path.display()
    );
    path
}

/// The methods a path item of OpenAPI may hold.
const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A path with its parameters' names left out (`/a/{id}` -> `/a/{}`): the
/// server's pattern and the document may name a parameter differently.
fn unnamed(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            c if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// A server with every demo model, the result cache off and an admin token
/// the fuzzer does not know.
async fn server() -> (crate::common::TestServer, crate::common::Repo) {
    let repo = ["tiny-classifier", "unet-seg", "spheroid-seg", "night-calls"]
        .into_iter()
        .fold(crate::common::Repo::new(), |repo, model| {
            repo.copy(&format!("models/{model}"), model, None)
        });
    let mut config = crate::common::config(repo.path());
    config.cache.enabled = false;
    config.server.admin_token = "not-given-to-the-fuzzer".into();
    let server = crate::common::TestServer::ready(config, crate::common::onnx_provider()).await;
    (server, repo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_route_in_openapi_3_1() {
    let (server, _repo) = server().await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    // Every route the server registered is described, and every described
    // route is one the server registered (parameter names aside).
    let described: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("path item").keys();
            methods
                .filter(|m| HTTP_METHODS.contains(&m.as_str()))
                .map(move |m| (m.to_uppercase(), unnamed(path)))
        })
        .collect();
    let registered: BTreeSet<(String, String)> = gantry::api::registered_routes()
        .into_iter()
        .map(|(method, path)| (method, unnamed(&path)))
        .collect();
    assert!(registered.len() >= 30, "{registered:?}");
    let undescribed: Vec<_> = registered.difference(&described).collect();
    let unserved: Vec<_> = described.difference(&registered).collect();
    assert!(
        undescribed.is_empty() && unserved.is_empty(),
        "routes the server registers but /openapi.json lacks: {undescribed:?}; \
         routes /openapi.json describes but the server lacks: {unserved:?}"
    );
    let scale = &paths["/api/optimized/models/{model}/replicas"]["put"];
    assert_eq!(scale["security"], json!([{"admin_token": []}]));
    let predict = &paths["/api/optimized/predict"]["post"];
    let bodies = predict["requestBody"]["content"].as_object().unwrap();
    assert!(bodies.contains_key("application/json") && bodies.contains_key("multipart/form-data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let (server, _repo) = server().await;
    let schema = server.url("/openapi.json");
    let settings = tempfile::NamedTempFile::new().expect("temp file");
    // A 504 is the client's own deadline passing (a 1 ms `x-request-timeout-ms`
    // or `timeout_ms`), documented and not a fault; any other 5xx is.
    std::fs::write(
        settings.path(),
        "[checks.not_a_server_error]\nexpected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"504\"]\n",
    )
    .expect("write schemathesis.toml");
    let settings_path = settings.path().display().to_string();
    // schemathesis keeps run state in its working folder: a scratch one.
    let workdir = tempfile::tempdir().expect("temp dir");
    let cwd = workdir.path().to_path_buf();
    let args: Vec<String> = [
        "-c",
        "import sys; from schemathesis.cli import schemathesis; \
         sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())",
        "--config-file",
        &settings_path,
        "run",
        &schema,
        "--url",
        &server.base,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,\
         response_schema_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "20",
        "--seed",
        "1",
        "--generation-deterministic",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let program = python();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .current_dir(&cwd)
            .args(&args)
            .env("PYTHONUNBUFFERED", "1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    })
    .await
    .expect("schemathesis thread");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    println!("{stdout}");

    // Afterwards the server is healthy and still predicts.
    let (status, body) = server.get("/v2/health/ready").await;
    assert_eq!(status, 200, "{body}");
    let features: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let (status, body) = server
        .post(
            "/api/optimized/predict",
            &json!({
                "model": "tiny-classifier",
                "inputs": {"features": crate::common::tensor(&[1, 64], "FP32", json!(features))},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        crate::common::floats(&body["outputs"]["logits"]["data"]).len(),
        10
    );
}
