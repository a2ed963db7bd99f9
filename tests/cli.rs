//! The `gantry` binary as operators run it: configuration errors exit 2 and
//! name the key and file, a missing ONNX Runtime says what to run, and
//! SIGTERM lets in-flight requests finish before exiting 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{noise, Repo};
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
    let config = common::root().join("config/gantry.toml");
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
    let mut child = gantry()
        .args(["--bind", "127.0.0.1:0", "--log-format", "json", "--models"])
        .arg(repo.path())
        .arg("--config")
        .arg(common::root().join("config/gantry.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("gantry starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "listening" {
                let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("listening line");
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = format!("{base}/api/optimized/health");
    while !client
        .get(&health)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for request in requests {
        let response = request.await.unwrap().expect("in-flight request answered");
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_model_repository() {
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let mut child = gantry()
        .args(["--bind", "127.0.0.1:0", "--log-format", "json", "--models"])
        .arg(repo.path())
        .arg("--config")
        .arg(common::root().join("config/gantry.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("gantry starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "listening" {
                let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("listening line");
    let client = reqwest::Client::new();
    let ready = |model: &str| format!("http://{addr}/v2/models/{model}/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(ready("tiny-classifier"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let repo = repo.copy("models/tiny-classifier", "second", None);
    let status = client.get(ready("second")).send().await.unwrap().status();
    assert_eq!(status, 404, "not served before the reload");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(ready("second"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            Instant::now() < deadline,
            "SIGHUP never loaded the new model"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    drop(repo);
}
