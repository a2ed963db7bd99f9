//! The result cache against real Redis: hits return exactly the stored
//! outputs without running the model, bypasses work, two servers share L2,
//! and a Redis that dies or starts late costs no request.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::{noise, tensor, Repo, TestServer};
use gantry::cache::CacheKey;
use gantry_actors::Tensor;
use serde_json::{json, Value};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

fn repo() -> Repo {
    Repo::new().copy("models/tiny-classifier", "tiny-classifier", None)
}

/// Inputs no earlier run has cached (Redis entries live for minutes).
fn fresh_request() -> Value {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    json!({"model": "tiny-classifier", "inputs": {"features": tensor(&[1, 64], "FP32", json!(noise(seed, 64)))}})
}

async fn items_run(server: &TestServer) -> u64 {
    server.stats().await["model_pools"]["tiny-classifier"]["batcher"]["items"]
        .as_u64()
        .unwrap()
}

fn shared_redis_is_up() {
    let client = redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("tests need Redis at {SHARED_REDIS} (.ci/run starts it): {e}"));
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_returns_exactly_the_stored_outputs_without_running_the_model() {
    let repo = repo();
    let server = TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let request = fresh_request();
    let (status, first) = server.post("/api/optimized/predict", &request).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["cache"], Value::Null);
    assert_eq!(first["batch_size"], 1);
    let ran = items_run(&server).await;

    let (status, hit) = server.post("/api/optimized/predict", &request).await;
    assert_eq!(status, 200);
    assert_eq!(hit["cache"], "l1");
    assert_eq!(
        hit["outputs"], first["outputs"],
        "a hit returns the stored outputs"
    );
    assert_eq!(hit["batch_size"], Value::Null);
    assert_eq!(items_run(&server).await, ran, "a hit runs nothing");

    // Bypasses: "cache": false in the body, Cache-Control: no-cache.
    let mut bypass = request.clone();
    bypass["cache"] = json!(false);
    let (_, fresh) = server.post("/api/optimized/predict", &bypass).await;
    assert_eq!(fresh["cache"], Value::Null);
    let r = server
        .client
        .post(server.url("/api/optimized/predict"))
        .header("cache-control", "no-cache")
        .json(&request)
        .send()
        .await
        .unwrap();
    let fresh: Value = r.json().await.unwrap();
    assert_eq!(fresh["cache"], Value::Null);
    assert_eq!(items_run(&server).await, ran + 2);

    // Errors are never cached.
    let bad = json!({"model": "tiny-classifier", "inputs": {"features": tensor(&[1, 3], "FP32", json!([1, 2, 3]))}});
    for _ in 0..2 {
        let (status, _) = server.post("/api/optimized/predict", &bad).await;
        assert_eq!(status, 422);
    }
    let stats = server.stats().await;
    let l1 = &stats["cache"]["l1"];
    assert_eq!(
        (l1["hits"].as_u64(), l1["entries"].as_u64()),
        (Some(1), Some(1)),
        "{l1}"
    );
    assert!(l1["bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["cache"]["l2"], Value::Null);
    assert_eq!(stats["connection_pools"]["redis"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_results_through_redis() {
    shared_redis_is_up();
    let repo = repo();
    let mut config = crate::common::config(repo.path());
    config.cache.redis_url = SHARED_REDIS.into();
    // Generous: under CI load a slow answer must not read as a miss.
    config.cache.redis_timeout_ms = 2000;
    let first = TestServer::ready(config.clone(), crate::common::onnx_provider()).await;
    let second = TestServer::ready(config, crate::common::onnx_provider()).await;
    let request = fresh_request();
    let (_, computed) = first.post("/api/optimized/predict", &request).await;
    assert_eq!(computed["cache"], Value::Null);

    // The L2 write is off the request path: wait until the entry is in
    // Redis (asking the second server earlier would fill its own L1).
    let values: Vec<f32> = crate::common::floats(&request["inputs"]["features"]["data"])
        .iter()
        .map(|&v| v as f32)
        .collect();
    let key = CacheKey::of(
        "tiny-classifier",
        computed["model_version"].as_str().unwrap(),
        &[(
            "features".to_string(),
            Tensor::from_f32(vec![1, 64], &values).unwrap(),
        )],
    );
    let redis_key = format!("gantry:v1:{}", key.hex());
    let mut conn = redis::Client::open(SHARED_REDIS)
        .unwrap()
        .get_connection()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis::cmd("EXISTS")
        .arg(&redis_key)
        .query::<bool>(&mut conn)
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "the first server never wrote {redis_key}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, answer) = second.post("/api/optimized/predict", &request).await;
    assert_eq!(
        (status, answer["cache"].as_str()),
        (200, Some("l2")),
        "{answer}"
    );
    assert_eq!(answer["outputs"], computed["outputs"]);
    let (_, again) = second.post("/api/optimized/predict", &request).await;
    assert_eq!(again["cache"], "l1", "an L2 hit fills L1");

    let stats = second.stats().await;
    assert_eq!(stats["connection_pools"]["redis"]["status"], "up");
    assert!(stats["cache"]["l2"]["hits"].as_u64().unwrap() >= 1);
    let (_, health) = second.get("/api/optimized/health").await;
    assert_eq!(
        (
            health["status"].as_str(),
            health["dependencies"]["redis"].as_str()
        ),
        (Some("ok"), Some("up"))
    );

    let client = redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("gantry:v1:*")
        .query(&mut conn)
        .unwrap();
    assert!(!keys.is_empty());
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut conn).unwrap();
    assert!(ttl > 0, "entries expire");
}

/// A `redis-server` of this test's own on a free port.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn new() -> OwnRedis {
        OwnRedis {
            port: Self::free_port(),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends fresh requests until health shows `want` for Redis; every request
/// must succeed meanwhile.
async fn serve_until_redis(server: &TestServer, want: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served = 0;
    loop {
        let (status, answer) = server
            .post("/api/optimized/predict", &fresh_request())
            .await;
        assert_eq!(status, 200, "a Redis fault must cost no request: {answer}");
        served += 1;
        let (_, health) = server.get("/api/optimized/health").await;
        if health["dependencies"]["redis"] == want {
            let expected = if want == "up" { "ok" } else { "degraded" };
            assert_eq!(health["status"], expected, "{health}");
            // The alerting gauge says the same as health.
            let gauge = format!("gantry_cache_l2_up {}", u8::from(want == "up"));
            let page = server.metrics_page().await;
            assert!(page.lines().any(|l| l == gauge), "no `{gauge}` in:\n{page}");
            return served;
        }
        assert!(
            Instant::now() < deadline,
            "redis never became {want}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_and_coming_back_costs_no_request() {
    let mut redis = OwnRedis::new();
    redis.start();
    let repo = repo();
    let mut config = crate::common::config(repo.path());
    config.cache.redis_url = redis.url();
    let server = TestServer::ready(config, crate::common::onnx_provider()).await;
    serve_until_redis(&server, "up").await;

    redis.kill();
    serve_until_redis(&server, "down").await;
    let (status, _) = server.get("/api/optimized/health").await;
    assert_eq!(status, 200, "degraded still serves");

    redis.start();
    serve_until_redis(&server, "up").await;
    let stats = server.stats().await;
    assert!(stats["cache"]["l2"]["errors"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_is_connected_when_it_comes_up() {
    let mut redis = OwnRedis::new();
    let repo = repo();
    let mut config = crate::common::config(repo.path());
    config.cache.redis_url = redis.url();
    let server = TestServer::ready(config, crate::common::onnx_provider()).await;
    serve_until_redis(&server, "down").await;
    redis.start();
    serve_until_redis(&server, "up").await;
}

/// Identical requests that miss together run the model once: the first
/// computes, the others wait for its outputs (`"cache": "coalesced"`), and
/// a request whose leader fails runs on its own instead of inheriting the
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_misses_run_once() {
    use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
    let repo = Repo::new().fake("slow", "max_batch_size = 1\nwarmup = 0\n");
    let mut factory =
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(300), Duration::ZERO);
    factory.poison = Some(666.0);
    let provider = std::sync::Arc::new(FakeProvider::new(factory));
    let mut config = crate::common::config(repo.path());
    config.cache.redis_url = String::new();
    let server = TestServer::ready(config, provider).await;
    let body = |v: f32| json!({"model": "slow", "inputs": {"x": tensor(&[1, 4], "FP32", json!([v, 0, 0, 0]))}});
    let items = |stats: &Value| {
        stats["model_pools"]["slow"]["batcher"]["items"]
            .as_u64()
            .unwrap()
    };

    let before = items(&server.stats().await);
    let same = body(3.0);
    let answers = futures_util::future::join_all(
        (0..8).map(|_| server.post("/api/optimized/predict", &same)),
    )
    .await;
    let mut levels: Vec<String> = answers
        .iter()
        .map(|(status, answer)| {
            assert_eq!(*status, 200, "{answer}");
            assert_eq!(answer["outputs"]["y"]["data"][0], 7.0, "{answer}");
            answer["cache"].as_str().unwrap_or("none").to_string()
        })
        .collect();
    levels.sort();
    assert_eq!(
        levels,
        ["coalesced"; 7]
            .iter()
            .chain(&["none"])
            .copied()
            .collect::<Vec<_>>()
    );
    let stats = server.stats().await;
    assert_eq!(
        items(&stats) - before,
        1,
        "one inference for eight requests"
    );
    assert_eq!(stats["cache"]["coalesced"], 7, "{}", stats["cache"]);
    let metrics = server.metrics_page().await;
    assert!(
        metrics.contains("gantry_cache_coalesced_total 7"),
        "{metrics}"
    );

    // A failing leader: its followers run their own inference (and fail on
    // their own, with their own answer).
    let poisoned = body(666.0);
    let answers = futures_util::future::join_all(
        (0..3).map(|_| server.post("/api/optimized/predict", &poisoned)),
    )
    .await;
    for (status, answer) in &answers {
        assert_eq!(
            (*status, answer["code"].as_str()),
            (500, Some("inference_failed")),
            "{answer}"
        );
    }
    assert_eq!(server.stats().await["cache"]["coalesced"], 7);
}
