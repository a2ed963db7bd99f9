//! Real clients against a real server:
//! - the official Triton HTTP client (`tritonclient[http]`, pinned in
//!   tests/clients/requirements.txt) works unmodified against Gantry's KServe
//!   v2 endpoints (tests/clients/triton_client.py);
//! - the same client, sync, gevent `async_infer` and asyncio, speaks the rest
//!   of Triton's HTTP protocol: model configuration, statistics, model
//!   control, compression (tests/clients/triton_protocol.py);
//! - the same client, sync and asyncio, with inputs and outputs in system
//!   shared memory regions, and the CUDA shared memory routes as a server
//!   holding no CUDA region answers them (tests/clients/triton_shm.py);
//! - the same client, sync and asyncio, running sequences on stateful models
//!   (an accumulator fixture and Silero VAD; tests/clients/triton_sequences.py);
//! - the official Triton gRPC client (`tritonclient[grpc]`, sync and asyncio)
//!   against Gantry's gRPC server: health, metadata, inference with raw and
//!   typed contents, request parameters and sequences, configuration and
//!   statistics, streaming, the repository RPCs (admin: the bearer token in
//!   metadata, tests/clients/triton_grpc_admin.py), deadlines and
//!   cancellation dropping calls before inference
//!   (tests/clients/triton_grpc_deadlines.py), errors as status codes, gzip,
//!   `grpc.health.v1` (tests/clients/triton_grpc.py), and inputs and outputs
//!   in system shared memory, sync, asyncio and streamed
//!   (tests/clients/triton_grpc_shm.py);
//! - a Python backend posting files with `requests`, as a Flask app would
//!   (tests/clients/flask_client.py);
//! - a Node 20 backend posting files with `fetch` and `FormData`
//!   (tests/clients/node_client.mjs; `node` must be on the PATH).
//!
//! The interpreter is `GANTRY_TEST_PYTHON` (set by `make test`), else
//! `.venv/bin/python`; without either the test fails and says to run
//! `make venv`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};

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
    let venv = crate::common::root().join(".venv/bin/python");
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
    let repo = crate::common::Repo::new()
        .copy("tests/fixtures/models/dtypes", "dtypes", None)
        .copy("models/tiny-classifier", "tiny-classifier", None);
    let server = crate::common::TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let host_port = server
        .base
        .strip_prefix("http://")
        .expect("base starts with http://")
        .to_string();
    let script = crate::common::root().join("tests/clients/triton_client.py");
    run_client(python, vec![script.display().to_string(), host_port]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_grpc_client_works_against_the_grpc_server() {
    let python = python();
    let repo = crate::common::Repo::new()
        .copy("tests/fixtures/models/dtypes", "dtypes", None)
        .copy("tests/fixtures/models/accumulator", "accumulator", None)
        .copy("models/tiny-classifier", "tiny-classifier", None);
    let mut config = crate::common::config(repo.path());
    config.server.grpc_bind = "127.0.0.1:0".into();
    config.server.body_limit_mb = 4;
    config.cache.enabled = false;
    let server = crate::common::TestServer::ready(config, crate::common::onnx_provider()).await;
    let grpc = server.grpc.clone().expect("gRPC is on");
    let script = crate::common::root().join("tests/clients/triton_grpc.py");
    run_client(python, vec![script.display().to_string(), grpc]).await;
    // The calls were counted as HTTP's are, with the statuses they map from.
    let stats = server.stats().await;
    let statuses = &stats["performance_metrics"]["models"]["tiny-classifier"]["statuses"];
    assert_eq!(statuses["200"], 58, "{statuses}");
    assert_eq!(statuses["422"], 2, "{statuses}");
    assert_eq!(statuses["400"], 1, "{statuses}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_deadlines_and_cancellations_leave_the_queue() {
    let python = python();
    let repo = crate::common::Repo::new().fake(
        "slow",
        "replicas = 1\nmax_batch_size = 1\nbatch_window_ms = 1\n",
    );
    let mut config = crate::common::config(repo.path());
    config.server.grpc_bind = "127.0.0.1:0".into();
    config.cache.enabled = false;
    let provider = std::sync::Arc::new(FakeProvider::new(
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(1000), Duration::ZERO),
    ));
    let server = crate::common::TestServer::ready(config, provider).await;
    let grpc = server.grpc.clone().expect("gRPC is on");
    let script = crate::common::root().join("tests/clients/triton_grpc_deadlines.py");
    run_client(python, vec![script.display().to_string(), grpc]).await;
    // Neither ran: each was dropped before inference (in the queue, or as
    // the batch waiting on the replica), and only the first was inferred.
    let stats = crate::common::live::until(&server, "the queue settled", |s| {
        let pool = &s["model_pools"]["slow"];
        pool["batcher"]["queue_depth"] == 0 && pool["replicas"][0]["inflight"] == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stats_after = server.stats().await;
    // Everything but the time since the last request and the demand
    // (which decays with it) stands still.
    let settled = |stats: &serde_json::Value| {
        let mut pool = stats["model_pools"]["slow"].clone();
        pool["usage"]["idle_s"] = serde_json::Value::Null;
        pool["usage"]["demand"] = serde_json::Value::Null;
        pool
    };
    assert_eq!(settled(&stats), settled(&stats_after), "still running");
    let pool = &stats_after["model_pools"]["slow"];
    assert_eq!(pool["batcher"]["items"], 1 + 1, "{pool}"); // warmup's and the first
    assert_eq!(pool["replicas"][0]["processed"], 1 + 1, "{pool}");
    // The deadline's call is answered 504 (DEADLINE_EXCEEDED) when the
    // server's timeout fires before the client's own deadline resets the
    // call (both are 100 ms); a call cancelled first gets no answer and is
    // not counted as answered, so nothing else may appear.
    let statuses = &stats_after["performance_metrics"]["models"]["slow"]["statuses"];
    assert_eq!(statuses["200"], 1, "{statuses}");
    let others: Vec<&String> = statuses
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "200")
        .collect();
    assert!(others.iter().all(|k| *k == "504"), "{statuses}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_grpc_client_shares_memory_with_the_server() {
    let python = python();
    let repo = crate::common::Repo::new()
        .copy("tests/fixtures/models/dtypes", "dtypes", None)
        .copy("models/tiny-classifier", "tiny-classifier", None);
    let mut config = crate::common::config(repo.path());
    config.server.grpc_bind = "127.0.0.1:0".into();
    let server = crate::common::TestServer::ready(config, crate::common::onnx_provider()).await;
    let grpc = server.grpc.clone().expect("gRPC is on");
    let script = crate::common::root().join("tests/clients/triton_grpc_shm.py");
    run_client(python, vec![script.display().to_string(), grpc]).await;
}

/// With an admin token set, an infer naming a region needs it over gRPC
/// too (tritonclient sends it with `headers=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_grpc_client_shares_memory_only_with_the_admin_token() {
    let python = python();
    let repo = crate::common::Repo::new().copy("tests/fixtures/models/dtypes", "dtypes", None);
    let mut config = crate::common::config(repo.path());
    config.server.grpc_bind = "127.0.0.1:0".into();
    config.server.admin_token = "shm-token".into();
    let server = crate::common::TestServer::ready(config, crate::common::onnx_provider()).await;
    let grpc = server.grpc.clone().expect("gRPC is on");
    let script = crate::common::root().join("tests/clients/triton_grpc_shm.py");
    let args = vec![script.display().to_string(), grpc, "shm-token".into()];
    run_client(python, args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_admin_rpcs_need_the_bearer_token() {
    let python = python();
    let repo = crate::common::Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let mut config = crate::common::config(repo.path());
    config.server.grpc_bind = "127.0.0.1:0".into();
    config.server.admin_token = "grpc-s3cret".into();
    let server = crate::common::TestServer::ready(config, crate::common::onnx_provider()).await;
    let grpc = server.grpc.clone().expect("gRPC is on");
    let script = crate::common::root().join("tests/clients/triton_grpc_admin.py");
    run_client(
        python,
        vec![script.display().to_string(), grpc, "grpc-s3cret".into()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_http_client_speaks_the_rest_of_the_protocol() {
    let python = python();
    let repo = crate::common::Repo::new()
        .copy("tests/fixtures/models/dtypes", "dtypes", None)
        .copy("tests/fixtures/models/half-and-text", "half-and-text", None)
        .copy("models/night-calls", "night-calls", None)
        .copy("models/tiny-classifier", "tiny-classifier", None);
    let server = crate::common::TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    // A folder whose model.onnx is not one, for `load_model("broken")` to
    // refuse. Written once the server is ready: present at startup, a model
    // that never loads would keep health at 503.
    let broken = repo.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("model.onnx"),
        b"not an ONNX model \x00\x01\x02\xff",
    )
    .unwrap();
    let host_port = server
        .base
        .strip_prefix("http://")
        .expect("base starts with http://")
        .to_string();
    let script = crate::common::root().join("tests/clients/triton_protocol.py");
    run_client(python, vec![script.display().to_string(), host_port]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_http_client_shares_memory_with_the_server() {
    let python = python();
    let repo = crate::common::Repo::new()
        .copy("tests/fixtures/models/dtypes", "dtypes", None)
        .copy("models/tiny-classifier", "tiny-classifier", None);
    let server = crate::common::TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let host_port = server
        .base
        .strip_prefix("http://")
        .expect("base starts with http://")
        .to_string();
    let script = crate::common::root().join("tests/clients/triton_shm.py");
    run_client(python, vec![script.display().to_string(), host_port]).await;
}

/// With an admin token set, the shared memory routes and an infer request
/// naming a region need it (tritonclient sends it with `headers=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_http_client_shares_memory_only_with_the_admin_token() {
    let python = python();
    let repo = crate::common::Repo::new().copy("tests/fixtures/models/dtypes", "dtypes", None);
    let mut config = crate::common::config(repo.path());
    config.server.admin_token = "shm-token".into();
    let server = crate::common::TestServer::ready(config, crate::common::onnx_provider()).await;
    let host_port = server
        .base
        .strip_prefix("http://")
        .expect("base starts with http://")
        .to_string();
    let script = crate::common::root().join("tests/clients/triton_shm.py");
    let args = vec![script.display().to_string(), host_port, "shm-token".into()];
    run_client(python, args).await;
}

/// Silero VAD's `silero_vad.onnx`, which `make venv` takes from the
/// `silero-vad` wheel on PyPI (`GANTRY_TEST_SILERO` may name another).
fn silero() -> PathBuf {
    let path = std::env::var_os("GANTRY_TEST_SILERO")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::common::root().join(".venv/silero_vad.onnx"));
    assert!(
        path.exists(),
        "{} does not exist; run `make venv` (it extracts Silero VAD from the silero-vad wheel)",
        path.display()
    );
    path
}

/// Silero VAD as a sequence model: the server carries its recurrent state
/// (`state` in, `stateN` out) from one 512-sample chunk to the next.
const SILERO_TOML: &str = "\
max_batch_size = 1
# Warmup's zero-filled inputs are no audio chunk.
warmup = 0

[sequence]
[[sequence.state]]
input = \"state\"
output = \"stateN\"
dims = [2, 1, 128]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_http_client_runs_sequences_on_stateful_models() {
    let python = python();
    let fixture = std::fs::read_to_string(
        crate::common::root().join("tests/fixtures/models/accumulator/model.toml"),
    )
    .unwrap();
    let quick = fixture.replace("[sequence]\n", "[sequence]\nmax_sequence_idle_ms = 500\n");
    assert_ne!(quick, fixture, "the fixture has a [sequence] table");
    let repo = crate::common::Repo::new().copy(
        "tests/fixtures/models/accumulator",
        "accumulator",
        Some(&quick),
    );
    let vad = repo.path().join("silero-vad");
    std::fs::create_dir_all(&vad).unwrap();
    std::fs::copy(silero(), vad.join("model.onnx")).unwrap();
    std::fs::write(vad.join("model.toml"), SILERO_TOML).unwrap();
    let server = crate::common::TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let host_port = server.base.trim_start_matches("http://").to_string();
    let script = crate::common::root().join("tests/clients/triton_sequences.py");
    let onnx = vad.join("model.onnx").display().to_string();
    run_client(python, vec![script.display().to_string(), host_port, onnx]).await;
}

/// Runs `program args..` on a blocking thread and fails the test with its
/// output unless it succeeds.
async fn run_client(program: PathBuf, args: Vec<String>) {
    let shown = format!("{} {}", program.display(), args.join(" "));
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(&args)
            .env("PYTHONUNBUFFERED", "1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    })
    .await
    .expect("client thread");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    println!("{stdout}");
}

/// A server with the two trained demo models, its repository, and the
/// arguments every file client takes: base URL and fixture folder.
async fn media_server() -> (crate::common::TestServer, crate::common::Repo, Vec<String>) {
    let repo = crate::common::Repo::new()
        .copy("models/spheroid-seg", "spheroid-seg", None)
        .copy("models/night-calls", "night-calls", None);
    let server = crate::common::TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let fixtures = crate::common::root().join("tests/fixtures/media");
    let args = vec![server.base.clone(), fixtures.display().to_string()];
    (server, repo, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_client_posts_files_like_a_flask_backend() {
    let (_server, _repo, args) = media_server().await;
    let script = crate::common::root().join("tests/clients/flask_client.py");
    let mut all = vec![script.display().to_string()];
    all.extend(args);
    run_client(python(), all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fetch_client_posts_files_with_form_data() {
    let (_server, _repo, args) = media_server().await;
    let script = crate::common::root().join("tests/clients/node_client.mjs");
    let mut all = vec![script.display().to_string()];
    all.extend(args);
    run_client(PathBuf::from("node"), all).await;
}
