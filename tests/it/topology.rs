//! The shipped multi-instance topology (`compose.yaml`) with real processes:
//! two `gantry` binaries sharing the machine's Redis and a PostgreSQL
//! database, behind HAProxy running the shipped `deploy/compose/haproxy.cfg`.
//! Requests through the balancer reach both instances, an answer computed
//! by one is a cache hit on the other, every answered request has its row
//! in PostgreSQL, and an instance that drains leaves the rotation without
//! costing a request.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::binary::Gantry;
use crate::common::database::{connect, TempDatabase};
use crate::common::{noise, tensor, Repo};
use serde_json::{json, Value};

const REDIS: &str = "redis://127.0.0.1:6379";

/// HAProxy in the foreground on the shipped configuration.
struct Balancer {
    child: Child,
    base: String,
}

impl Balancer {
    fn start(backends: [&str; 2]) -> Balancer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = |base: &str| base.trim_start_matches("http://").to_string();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(crate::common::root().join("deploy/compose/haproxy.cfg"))
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("GANTRY_1_ADDR", address(backends[0]))
            .env("GANTRY_2_ADDR", address(backends[1]))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy runs (Debian package haproxy; .ci/run installs it)");
        Balancer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Inputs no earlier run has cached (Redis entries live for minutes).
fn fresh_request() -> Value {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    json!({"model": "tiny-classifier",
           "inputs": {"features": tensor(&[1, 64], "FP32", json!(noise(seed, 64)))}})
}

/// One answered prediction: which instance answered (HAProxy's
/// `x-served-by`, absent when asked directly), the cache level, the row id.
struct Answer {
    served_by: Option<String>,
    cache: Option<String>,
    prediction_id: String,
    outputs: Value,
}

async fn predict(client: &reqwest::Client, base: &str, body: &Value) -> Answer {
    let response = client
        .post(format!("{base}/api/optimized/predict"))
        .json(body)
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(status, 200, "{answer}");
    Answer {
        served_by,
        cache: answer["cache"].as_str().map(str::to_string),
        prediction_id: answer["prediction_id"].as_str().unwrap().to_string(),
        outputs: answer["outputs"].clone(),
    }
}

/// The input hash (the cache key) of a logged prediction, once its row is
/// written.
async fn input_hash(db: &tokio_postgres::Client, prediction_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = db
            .query(
                "SELECT input_sha256 FROM predictions WHERE prediction_id::text = $1",
                &[&prediction_id],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(Instant::now() < deadline, "{prediction_id} has no row");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks through the balancer until both instances have answered.
async fn wait_for_both(client: &reqwest::Client, balancer: &Balancer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the balancer reached only {seen:?}"
        );
        if let Ok(r) = client
            .get(format!("{}/v2/health/ready", balancer.base))
            .send()
            .await
        {
            if let Some(server) = r.headers().get("x-served-by") {
                if r.status() == 200 {
                    seen.insert(server.to_str().unwrap().to_string());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_haproxy_share_the_cache_and_log_every_request() {
    let database = TempDatabase::create().await;
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let database_url = database.url();
    let env = [
        ("GANTRY__CACHE__REDIS_URL", REDIS),
        // Generous: under CI load a slow answer must not read as a miss.
        ("GANTRY__CACHE__REDIS_TIMEOUT_MS", "2000"),
        ("GANTRY__STORE__DATABASE_URL", database_url.as_str()),
        ("GANTRY__STORE__FLUSH_MS", "50"),
        ("GANTRY__SERVER__DRAIN_DELAY_S", "3"),
    ];
    let instances = [
        Gantry::spawn(repo.path(), &env),
        Gantry::spawn(repo.path(), &env),
    ];
    let client = reqwest::Client::new();
    for gantry in &instances {
        gantry.wait_for_200(&client, "/v2/health/ready").await;
    }
    let balancer = Balancer::start([&instances[0].base, &instances[1].base]);
    wait_for_both(&client, &balancer).await;
    let mut answered = Vec::new();

    // Traffic through the balancer reaches both instances.
    let mut per_server = BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let answer = predict(&client, &balancer.base, &fresh_request()).await;
        *per_server
            .entry(answer.served_by.clone().expect("x-served-by"))
            .or_default() += 1;
        answered.push(answer.prediction_id);
    }
    assert_eq!(per_server.len(), 2, "both instances serve: {per_server:?}");

    // An answer computed by one instance is a cache hit on the other: the
    // same request, sent again through the balancer, is answered from L2 by
    // the instance that did not compute it.
    let request = fresh_request();
    let computed = predict(&client, &balancer.base, &request).await;
    assert_eq!(computed.cache, None, "the first answer is computed");
    answered.push(computed.prediction_id.clone());
    let computed_by = computed.served_by.clone().unwrap();
    // The L2 write is off the request path: wait until the entry is in
    // Redis (its key is the row's input hash), so that the other instance
    // cannot miss it and compute the answer itself.
    let db = connect(&database_url).await;
    let key = format!(
        "gantry:v1:{}",
        input_hash(&db, &computed.prediction_id).await
    );
    let mut redis = redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the machine's Redis");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if stored {
            break;
        }
        assert!(Instant::now() < deadline, "{key} never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let again = predict(&client, &balancer.base, &request).await;
        answered.push(again.prediction_id.clone());
        assert_eq!(again.outputs, computed.outputs);
        let cache = again.cache.as_deref();
        if again.served_by.as_deref() == Some(computed_by.as_str()) {
            assert_eq!(cache, Some("l1"), "the computing instance keeps it");
        } else {
            assert_eq!(cache, Some("l2"), "the other instance reads Redis");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the balancer never sent the repeat to the other instance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A draining instance leaves the rotation: readiness turns 503 during
    // its drain delay, HAProxy's health check takes it out, and no request
    // through the balancer fails while it drains and exits, nor after.
    let [first, second] = instances;
    first.signal("TERM");
    let exited = tokio::spawn(first.exit_status());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exited.is_finished() {
        let answer = predict(&client, &balancer.base, &fresh_request()).await;
        answered.push(answer.prediction_id);
        assert!(
            Instant::now() < deadline,
            "the signalled instance never exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(exited.await.unwrap().code(), Some(0));
    for _ in 0..10 {
        let answer = predict(&client, &balancer.base, &fresh_request()).await;
        assert_eq!(answer.served_by.as_deref(), Some("gantry-2"));
        answered.push(answer.prediction_id);
    }

    // Every answered request has its row, written by whichever instance
    // answered it.
    let unique: HashSet<&String> = answered.iter().collect();
    assert_eq!(unique.len(), answered.len(), "prediction ids are unique");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: Vec<String> = db
            .query("SELECT prediction_id::text FROM predictions", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let stored: HashSet<&String> = rows.iter().collect();
        if unique.iter().all(|id| stored.contains(id)) {
            assert_eq!(rows.len(), answered.len(), "one row per answer, no more");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} answers have a row",
            unique.iter().filter(|id| stored.contains(*id)).count(),
            answered.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
}
