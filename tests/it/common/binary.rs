//! The `gantry` binary as a child process: JSON logs on a channel, the
//! address it listens on, signals, exit status.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `gantry` on 127.0.0.1:0 with JSON logs.
pub struct Gantry {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `127.0.0.1:PORT` of the gRPC server, when started with one.
    pub grpc: Option<String>,
    /// Every JSON log line after the `listening` one.
    pub events: Receiver<Value>,
}

impl Gantry {
    /// Starts the binary on the models in `models`, with the shipped config
    /// and extra environment variables; gRPC off.
    pub fn spawn(models: &Path, env: &[(&str, &str)]) -> Gantry {
        Gantry::start(models, env, false)
    }

    /// [`Gantry::spawn`] with gRPC on a port of its own too.
    pub fn spawn_with_grpc(models: &Path, env: &[(&str, &str)]) -> Gantry {
        Gantry::start(models, env, true)
    }

    fn start(models: &Path, env: &[(&str, &str)], grpc: bool) -> Gantry {
        let library = gantry::runtime::locate_onnxruntime("").expect("make onnxruntime has run");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gantry"));
        command
            // gRPC off unless asked for, and then on a free port: tests run
            // side by side.
            .args([
                "--bind",
                "127.0.0.1:0",
                if grpc {
                    "--grpc-bind=127.0.0.1:0"
                } else {
                    "--grpc-bind="
                },
                "--log-format",
                "json",
                "--models",
            ])
            .arg(models)
            .arg("--config")
            .arg(super::root().join("config/gantry.toml"))
            .env("ORT_DYLIB_PATH", library)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("gantry starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    // Keep draining the pipe even when nobody listens.
                    let _ = tx.send(event);
                }
            }
        });
        let listening = |message: &str| loop {
            let event = events
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("a '{message}' line"));
            if event["message"] == message {
                break event["addr"].as_str().unwrap_or_default().to_string();
            }
        };
        let addr = listening("listening");
        let grpc = grpc.then(|| listening("gRPC listening"));
        Gantry {
            child,
            base: format!("http://{addr}"),
            grpc,
            events,
        }
    }

    /// Polls `path` until it answers 200 (at most 30 s).
    pub async fn wait_for_200(&self, client: &reqwest::Client, path: &str) {
        let url = format!("{}{path}", self.base);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "{path} never answered 200");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most 20 s) for a log line whose message contains `text`,
    /// passing over the lines before it.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with '{text}'"));
            if event["message"].as_str().unwrap_or_default().contains(text) {
                return;
            }
        }
    }

    /// Sends a signal (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }

    /// Waits for the process to exit.
    pub async fn exit_status(self) -> ExitStatus {
        tokio::task::spawn_blocking(move || {
            let mut gantry = self;
            gantry.child.wait().expect("wait")
        })
        .await
        .expect("no panic")
    }
}

impl Drop for Gantry {
    /// A test that fails midway leaves no server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
