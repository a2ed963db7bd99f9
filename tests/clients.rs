//! The official Triton HTTP client (`tritonclient[http]`, pinned in
//! tests/clients/requirements.txt) works unmodified against Gantry's KServe v2
//! endpoints: tests/clients/triton_client.py runs against a real server.
//!
//! The interpreter is `GANTRY_TEST_PYTHON` (set by `make test`), else
//! `.venv/bin/python`; without either the test fails and says to run
//! `make venv`.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// The Python interpreter with tritonclient installed; panics when none is found.
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("GANTRY_TEST_PYTHON").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "GANTRY_TEST_PYTHON={} does not exist; run `make venv`",
            path.display()
        );
        return path;
    }
    let venv = common::root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the client tests: GANTRY_TEST_PYTHON is unset and {} does not exist; \
         run `make venv` (or `make test`, which sets it)",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_http_client_works_against_v2_endpoints() {
    let python = python();
    let repo = common::Repo::new()
        .copy("tests/fixtures/models/dtypes", "dtypes", None)
        .copy("models/tiny-classifier", "tiny-classifier", None);
    let server =
        common::TestServer::ready(common::config(repo.path()), common::onnx_provider()).await;
    let host_port = server
        .base
        .strip_prefix("http://")
        .expect("base starts with http://")
        .to_string();
    let script = common::root().join("tests/clients/triton_client.py");

    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .arg(&host_port)
            .env("PYTHONUNBUFFERED", "1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; run `make venv`", python.display()))
    })
    .await
    .expect("client thread");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "triton_client.py failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    println!("{stdout}");
}
