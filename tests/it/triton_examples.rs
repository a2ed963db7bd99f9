//! Triton's own example clients (tests/clients/triton_examples/, vendored
//! unchanged) against Triton's example model repository
//! (tests/fixtures/triton_repository/, served as it is): what a Triton user
//! moving over runs first. Each client is run as Triton's documentation
//! runs it, over HTTP or gRPC, and must exit 0 (they check their own
//! answers). Model control runs last: it unloads `simple`.
//!
//! The interpreter is `GANTRY_TEST_PYTHON` (set by `make test`), else
//! `.venv/bin/python`, with tests/clients/requirements.txt installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{config, onnx_provider, root, TestServer};

fn python() -> PathBuf {
    std::env::var_os("GANTRY_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

/// Copies `from` (a folder tree) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Runs one example client: its exit status and stdout, or why it could
/// not run.
fn run(python: &Path, script: &str, args: &[String]) -> Result<(bool, String), String> {
    let path = root().join("tests/clients/triton_examples").join(script);
    let output = Command::new(python)
        .arg(&path)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .map_err(|e| format!("{script}: cannot run {}: {e}", python.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok((true, stdout));
    }
    Ok((
        false,
        format!(
            "{script} {} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

/// Runs each `(script, args)` in turn (on a blocking thread); the
/// failures' outputs.
async fn run_all(python: &Path, runs: Vec<(&str, Vec<&str>)>) -> Vec<String> {
    let python = python.to_path_buf();
    let runs: Vec<(String, Vec<String>)> = runs
        .into_iter()
        .map(|(s, a)| (s.to_string(), a.into_iter().map(String::from).collect()))
        .collect();
    tokio::task::spawn_blocking(move || {
        runs.iter()
            .filter_map(|(script, args)| match run(&python, script, args) {
                Ok((true, _)) => None,
                Ok((false, failure)) | Err(failure) => Some(failure),
            })
            .collect()
    })
    .await
    .unwrap()
}

/// A server with gRPC on, serving `repository`.
async fn serve(repository: &Path) -> (TestServer, String, String) {
    let mut config = config(repository);
    config.server.grpc_bind = "127.0.0.1:0".into();
    config.cache.enabled = false;
    let server = TestServer::ready(config, onnx_provider()).await;
    let http = server.base.trim_start_matches("http://").to_string();
    let grpc = server.grpc.clone().expect("gRPC is on");
    (server, http, grpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritons_example_clients_pass_against_its_example_repository() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let repository = dir.path().join("models");
    copy_tree(
        &root().join("tests/fixtures/triton_repository"),
        &repository,
    );
    // The clients classify a picture; any will do.
    let image = dir.path().join("picture.jpg");
    let made = Command::new(&python)
        .args(["-c", "import sys; from PIL import Image; Image.new('RGB', (320, 240), (200, 120, 40)).save(sys.argv[1])"])
        .arg(&image)
        .status()
        .expect("python runs");
    assert!(
        made.success(),
        "Pillow makes the picture (tests/clients/requirements.txt)"
    );
    let (server, http, grpc) = serve(&repository).await;
    let mut failures = Vec::new();
    // First, as model control unloads `simple`: the health and metadata
    // clients check that the server is named
    // "triton": everything before that check must pass.
    for (script, url) in [
        ("simple_http_health_metadata.py", &http),
        ("simple_grpc_health_metadata.py", &grpc),
    ] {
        let args = ["-u".to_string(), url.clone()];
        match run(&python, script, &args) {
            Ok((false, output)) => {
                let failed: Vec<&str> =
                    output.lines().filter(|l| l.starts_with("FAILED")).collect();
                if failed != ["FAILED : get_server_metadata"] {
                    failures.push(format!("{script}: failed before the name check:\n{output}"));
                }
            }
            Ok((true, _)) => failures.push(format!("{script}: passed the \"triton\" name check")),
            Err(why) => failures.push(why),
        }
    }
    let image = image.display().to_string();
    let classify = ["-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION"];
    let mut runs: Vec<(&str, Vec<&str>)> = Vec::new();
    for script in [
        "simple_http_infer_client.py",
        "simple_http_async_infer_client.py",
        "simple_http_aio_infer_client.py",
        "simple_http_sequence_sync_infer_client.py",
        "simple_http_shm_client.py",
        "simple_http_shm_string_client.py",
        "simple_http_string_infer_client.py",
        "reuse_infer_objects_client.py",
    ] {
        runs.push((script, vec!["-u", &http]));
    }
    for script in [
        "simple_grpc_infer_client.py",
        "simple_grpc_async_infer_client.py",
        "simple_grpc_aio_infer_client.py",
        "simple_grpc_custom_args_client.py",
        "simple_grpc_keepalive_client.py",
        "simple_grpc_sequence_sync_infer_client.py",
        "simple_grpc_sequence_stream_infer_client.py",
        "simple_grpc_aio_sequence_stream_infer_client.py",
        "simple_grpc_shm_client.py",
        "simple_grpc_shm_string_client.py",
        "simple_grpc_string_infer_client.py",
        "grpc_explicit_int_content_client.py",
        "grpc_explicit_int8_content_client.py",
        "grpc_explicit_byte_content_client.py",
        "grpc_client.py",
    ] {
        runs.push((script, vec!["-u", &grpc]));
    }
    for (script, url, extra) in [
        ("image_client.py", &http, &[][..]),
        ("image_client.py", &http, &["-a"][..]),
        ("image_client.py", &grpc, &["-i", "grpc"][..]),
        ("grpc_image_client.py", &grpc, &[][..]),
        ("grpc_image_client.py", &grpc, &["-a"][..]),
        ("grpc_image_client.py", &grpc, &["--streaming"][..]),
    ] {
        let mut args = vec!["-u", url.as_str()];
        args.extend(classify);
        args.extend(extra);
        args.push(&image);
        runs.push((script, args));
    }
    // Last: it unloads `simple`.
    runs.push(("simple_http_model_control.py", vec!["-u", &http]));
    failures.extend(run_all(&python, runs).await);

    drop(server);

    // The sequence clients' `-d` runs, with Triton's QA model
    // simple_string_dyna_sequence beside the example repository.
    copy_tree(
        &root().join("tests/fixtures/triton_dyna_sequence"),
        &repository,
    );
    let (_server, http, grpc) = serve(&repository).await;
    let runs = vec![
        (
            "simple_http_sequence_sync_infer_client.py",
            vec!["-u", &http, "-d"],
        ),
        (
            "simple_grpc_sequence_sync_infer_client.py",
            vec!["-u", &grpc, "-d"],
        ),
        (
            "simple_grpc_sequence_stream_infer_client.py",
            vec!["-u", &grpc, "-d"],
        ),
        (
            "simple_grpc_aio_sequence_stream_infer_client.py",
            vec!["-u", &grpc, "-d"],
        ),
    ];
    failures.extend(run_all(&python, runs).await);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
