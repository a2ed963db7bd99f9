//! The `gantry` binary as operators run it: configuration errors exit 2 and
//! name the key and file, a missing ONNX Runtime says what to run, and
//! SIGTERM lets in-flight requests finish before exiting 0.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::binary::Gantry;
use crate::common::{noise, Repo};
use gantry::media::npy::write_npy;
use gantry_actors::Tensor;

fn gantry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gantry"));
    let library = gantry::runtime::locate_onnxruntime("").expect("make onnxruntime has run");
    command
        .env("ORT_DYLIB_PATH", library)
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("GANTRY__") {
            command.env_remove(key);
        }
    }
    // gRPC off: tests run side by side.
    command.env("GANTRY__SERVER__GRPC_BIND", "");
    command
}

fn run(command: &mut Command) -> (i32, String) {
    let output = command.output().expect("gantry runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn invalid_config_exits_2_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "[server]\nbody_limit_mb = 0\n").unwrap();
    let (code, stderr) = run(gantry().arg("--config").arg(&file));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("server.body_limit_mb") && stderr.contains("broken.toml"),
        "{stderr}"
    );

    std::fs::write(&file, "[server]\nworkers = -3\n").unwrap();
    let (code, stderr) = run(gantry().arg("--config").arg(&file));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("server.workers") && stderr.contains("broken.toml"),
        "{stderr}"
    );

    let (code, stderr) = run(gantry()
        .arg("--config")
        .arg(dir.path().join("missing.toml")));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

#[test]
fn invalid_environment_override_exits_2_naming_the_variable() {
    let config = crate::common::root().join("config/gantry.toml");
    let (code, stderr) = run(gantry()
        .arg("--config")
        .arg(&config)
        .env("GANTRY__SERVER__BIND", "nowhere"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("server.bind") && stderr.contains("GANTRY__SERVER__BIND"),
        "{stderr}"
    );
}

#[test]
fn missing_onnx_runtime_says_what_to_run() {
    let (code, stderr) = run(gantry().env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("make onnxruntime"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let repo = Repo::new().copy("models/unet-seg", "unet-seg", None);
    let gantry = Gantry::spawn(repo.path(), &[]);
    let base = gantry.base.clone();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    gantry.wait_for_200(&client, "/api/optimized/health").await;
    // Six uploads of 8 images each: about a quarter second of inference.
    let requests: Vec<_> = (0..6)
        .map(|seed| {
            let npy = write_npy(
                &Tensor::from_f32(vec![8, 3, 128, 128], &noise(seed, 8 * 49152)).unwrap(),
            );
            let form = reqwest::multipart::Form::new()
                .text("model", "unet-seg")
                .part("file", reqwest::multipart::Part::bytes(npy));
            tokio::spawn(
                client
                    .post(format!("{base}/api/optimized/predict"))
                    .multipart(form)
                    .send(),
            )
        })
        .collect();
    // Signal once all 48 items are inside the actor system: dispatched to
    // the replica or waiting in the batcher's queue.
    let stats = reqwest::Client::new();
    loop {
        let body: serde_json::Value = stats
            .get(format!("{base}/api/optimized/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let batcher = &body["model_pools"]["unet-seg"]["batcher"];
        let received =
            batcher["items"].as_u64().unwrap() + 8 * batcher["queue_depth"].as_u64().unwrap();
        if received == 48 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests never arrived: {batcher}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    gantry.signal("TERM");
    for request in requests {
        let response = request.await.unwrap().expect("in-flight request answered");
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
    }
    assert_eq!(gantry.exit_status().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_model_repository() {
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let gantry = Gantry::spawn(repo.path(), &[]);
    let client = reqwest::Client::new();
    let ready = |model: &str| format!("{}/v2/models/{model}/ready", gantry.base);
    gantry
        .wait_for_200(&client, "/v2/models/tiny-classifier/ready")
        .await;
    let repo = repo.copy("models/tiny-classifier", "second", None);
    let status = client.get(ready("second")).send().await.unwrap().status();
    assert_eq!(status, 404, "not served before the reload");
    gantry.signal("HUP");
    gantry
        .wait_for_200(&client, "/v2/models/second/ready")
        .await;
    gantry.signal("TERM");
    assert_eq!(gantry.exit_status().await.code(), Some(0));
    drop(repo);
}

/// ONNX Runtime's own telemetry (a device id and a database under
/// `~/.cache`, which Microsoft's builds write when loaded) stays off: the
/// server writes nothing into its home, so it also runs on a read-only root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_writes_no_telemetry_files() {
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_str().unwrap();
    let gantry = Gantry::spawn(repo.path(), &[("HOME", home_path)]);
    let client = reqwest::Client::new();
    gantry.wait_for_200(&client, "/v2/health/ready").await;
    gantry.signal("TERM");
    assert_eq!(gantry.exit_status().await.code(), Some(0));
    let written: Vec<_> = walk(home.path());
    assert!(written.is_empty(), "written into HOME: {written:?}");
    drop(repo);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            let mut below = if path.is_dir() { walk(&path) } else { vec![] };
            below.push(path);
            below
        })
        .collect()
}
