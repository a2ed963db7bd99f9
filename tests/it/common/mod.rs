//! Test harness: a real Gantry server on `127.0.0.1:0`, running its own
//! actix `System` on a thread of its own, with ONNX Runtime or the fake
//! engine; and helpers to build model repositories in temporary folders.

#![allow(dead_code)]

pub mod binary;
pub mod database;
pub mod forged;
pub mod live;
pub mod postgres;
pub mod raw;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry::config::Config;
use gantry_actors::engine::onnx::{init_runtime, OnnxProvider};
use gantry_actors::engine::EngineProvider;
use serde_json::Value;

/// The repository root (where `models/` and `tests/fixtures/` live).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads ONNX Runtime the way the binary does; fails the test (never skips)
/// when it is missing.
pub fn onnx_provider() -> Arc<dyn EngineProvider> {
    let library = gantry::runtime::locate_onnxruntime("")
        .unwrap_or_else(|e| panic!("tests need ONNX Runtime: {e}"));
    init_runtime(&library, Default::default()).expect("ONNX Runtime loads");
    Arc::new(OnnxProvider)
}

/// A config for tests: the given repository, two workers, a fixed budget.
pub fn config(models: &Path) -> Config {
    let mut config = Config::default();
    config.models.dir = models.to_path_buf();
    config.server.workers = 2;
    // Tests run side by side: gRPC only where a test asks (port 0).
    config.server.grpc_bind = String::new();
    config.memory.limit_mb = 8192;
    config
}

/// A running server; stopped when dropped.
pub struct TestServer {
    pub base: String,
    /// `host:port` of the gRPC server, when the config turned it on.
    pub grpc: Option<String>,
    handle: actix_web::dev::ServerHandle,
    pub client: reqwest::Client,
    /// What the server's workers share (to flip shutdown, say).
    pub state: actix_web::web::Data<gantry::api::AppState>,
    /// The arbiter the server was started on (where its actors run).
    pub arbiter: actix_rt::ArbiterHandle,
}

impl TestServer {
    /// Starts a server and waits until `/api/optimized/health` has answered
    /// at all (models may still be loading; see [`TestServer::wait_ready`]).
    pub fn start(config: Config, provider: Arc<dyn EngineProvider>) -> TestServer {
        TestServer::start_with_gpus(config, provider, None)
    }

    /// [`TestServer::start`] with the GPUs of `gpus` instead of NVML's.
    pub fn start_with_gpus(
        config: Config,
        provider: Arc<dyn EngineProvider>,
        gpus: Option<Arc<dyn gantry_actors::device::GpuInventory>>,
    ) -> TestServer {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
                let started = match gpus {
                    Some(gpus) => {
                        gantry::server::start_with_gpus(&config, listener, provider, gpus).await
                    }
                    None => gantry::server::start(&config, listener, provider).await,
                };
                let running = started.expect("server starts");
                let started = (
                    running.addr,
                    running.grpc.as_ref().map(|g| g.addr.to_string()),
                    running.server.handle(),
                    running.state.clone(),
                    actix_rt::Arbiter::current(),
                );
                tx.send(started).expect("test alive");
                let _ = running.run_until_stopped(Duration::from_secs(10)).await;
            });
        });
        let (addr, grpc, handle, state, arbiter) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server started");
        TestServer {
            base: format!("http://{addr}"),
            grpc,
            handle,
            state,
            arbiter,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }

    /// Starts a server and waits until every model is ready.
    pub async fn ready(config: Config, provider: Arc<dyn EngineProvider>) -> TestServer {
        let server = TestServer::start(config, provider);
        server.wait_ready().await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls health until it answers 200 (at most 30 s).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .client
                .get(self.url("/api/optimized/health"))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET returning status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    /// POST of a JSON value returning status and JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    /// POST of a multipart form to the predict endpoint: status and JSON body.
    pub async fn post_form(&self, form: reqwest::multipart::Form) -> (u16, Value) {
        self.post_form_to("/api/optimized/predict", form).await
    }

    /// POST of a multipart form to `path`: status and JSON body.
    pub async fn post_form_to(&self, path: &str, form: reqwest::multipart::Form) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .multipart(form)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    /// POST of a v2 binary-extension body to `path`: the JSON `header`
    /// followed by `raw`, with its `Inference-Header-Content-Length`.
    pub async fn post_binary(&self, path: &str, header: &Value, raw: &[u8]) -> reqwest::Response {
        let header = header.to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(raw);
        self.client
            .post(self.url(path))
            .header("Inference-Header-Content-Length", header.len())
            .header("Content-Type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// Stats as JSON.
    pub async fn stats(&self) -> Value {
        let (status, body) = self.get("/api/optimized/stats").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The `/metrics` page as text.
    pub async fn metrics_page(&self) -> String {
        let r = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Sends the stop command at once; the server thread then ends.
        drop(self.handle.stop(false));
    }
}

/// A temporary model repository.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies a model folder (`models/x` or `tests/fixtures/models/x`) in,
    /// with every file it holds (labels too), replacing its `model.toml`
    /// when `toml` is given.
    pub fn copy(self, from: &str, name: &str, toml: Option<&str>) -> Repo {
        let source = root().join(from);
        let target = self.path().join(name);
        std::fs::create_dir_all(&target).unwrap();
        for entry in std::fs::read_dir(&source).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, target.join(path.file_name().unwrap())).unwrap();
            }
        }
        if let Some(text) = toml {
            std::fs::write(target.join("model.toml"), text).unwrap();
        }
        self
    }

    /// A folder for a fake-engine model (its `.onnx` is never parsed).
    pub fn fake(self, name: &str, toml: &str) -> Repo {
        let target = self.path().join(name);
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("model.onnx"), format!("fake model {name}")).unwrap();
        std::fs::write(target.join("model.toml"), toml).unwrap();
        self
    }
}

/// A JSON tensor for the predict API.
pub fn tensor(shape: &[usize], datatype: &str, data: Value) -> Value {
    serde_json::json!({ "shape": shape, "datatype": datatype, "data": data })
}

/// Reads a JSON array of numbers as f64s.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Deterministic pseudo-random floats in [0, 1) (a tiny LCG; no rand crate needed).
pub fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32) / ((1u64 << 24) as f32)
        })
        .collect()
}

/// A gRPC `ModelInfer` request for `model` with one FP32 input `name` of
/// `shape`, every value `value`, in `raw_input_contents`.
pub fn grpc_request(
    model: &str,
    name: &str,
    shape: &[i64],
    value: f32,
) -> gantry::grpc::proto::ModelInferRequest {
    use gantry::grpc::proto::model_infer_request::InferInputTensor;
    let count = shape.iter().product::<i64>() as usize;
    gantry::grpc::proto::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape: shape.to_vec(),
            ..Default::default()
        }],
        raw_input_contents: vec![value.to_le_bytes().repeat(count)],
        ..Default::default()
    }
}

/// The value of one sample of the Prometheus page (0 when absent).
pub fn metric_sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let set: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
            let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            (metric == name
                && set.len() == wanted.len()
                && wanted.iter().all(|w| set.contains(&w.as_str())))
            .then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
