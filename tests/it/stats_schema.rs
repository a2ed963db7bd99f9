//! `/api/optimized/stats` against its documented schema, whole: the
//! ```text block under "## Stats schema" in docs/operations.md is parsed
//! (one key a line, nesting by indentation; `.<name>` a map of objects, `[]`
//! an array of objects, `?` a key left out when it does not apply, `{…}` a
//! map of counts) and compared with a live server's stats both ways: every
//! key the server sends is documented, and every documented key (but the
//! `?` ones) is sent. The server is set up so that every part has
//! something to show: a served model with traffic, a GPU model on a test
//! GPU, a replica the memory budget refuses, a folder that fails to load,
//! Redis and PostgreSQL.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::database::TempDatabase;
use crate::common::{tensor, Repo, TestServer};
use gantry_actors::device::FixedInventory;
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::{json, Value};

/// What a documented key holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// A value, or an object of the keys below it.
    Plain,
    /// `.<name>`: an object keyed by names, each value as the keys below.
    Named,
    /// `[]`: an array of objects of the keys below.
    Array,
    /// `{…}`: an object whose keys are values.
    Counts,
}

/// One documented key and the keys below it.
#[derive(Debug)]
struct Key {
    path: String,
    name: String,
    shape: Shape,
    optional: bool,
    children: Vec<Key>,
}

/// The keys of the "## Stats schema" block of docs/operations.md.
fn documented() -> Vec<Key> {
    let path = crate::common::root().join("docs/operations.md");
    let text = std::fs::read_to_string(&path).expect("docs/operations.md");
    let block = text
        .split("## Stats schema")
        .nth(1)
        .and_then(|rest| rest.split("```text\n").nth(1))
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```text block under ## Stats schema");
    let mut roots: Vec<Key> = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let indent = line.len() - line.trim_start().len();
        assert_eq!(indent % 2, 0, "odd indentation: {line:?}");
        let token = line.split_whitespace().next().unwrap();
        let (token, optional) = match token.strip_suffix('?') {
            Some(t) => (t, true),
            None => (token, false),
        };
        let (name, shape) = if let Some(n) = token.strip_suffix("[]") {
            (n, Shape::Array)
        } else if let Some(n) = token.strip_suffix("{…}") {
            (n, Shape::Counts)
        } else if let Some((n, _)) = token.split_once(".<") {
            (n, Shape::Named)
        } else {
            (token, Shape::Plain)
        };
        let mut siblings = &mut roots;
        let mut parent = String::new();
        for _ in 0..indent / 2 {
            let last = siblings.last_mut().unwrap_or_else(|| panic!("{line:?}"));
            parent = last.path.clone();
            siblings = &mut last.children;
        }
        siblings.push(Key {
            path: if parent.is_empty() {
                name.to_string()
            } else {
                format!("{parent}.{name}")
            },
            name: name.to_string(),
            shape,
            optional,
            children: Vec::new(),
        });
    }
    roots
}

/// Compares `value` (an object) with `keys`, noting what it saw and what
/// it found undocumented.
fn compare(
    value: &Value,
    keys: &[Key],
    at: &str,
    seen: &mut BTreeSet<String>,
    wrong: &mut Vec<String>,
) {
    let Some(object) = value.as_object() else {
        wrong.push(format!("{at}: not an object: {value}"));
        return;
    };
    for name in object.keys() {
        if !keys.iter().any(|k| &k.name == name) {
            wrong.push(format!("{at}.{name}: sent, not documented"));
        }
    }
    for key in keys {
        let Some(v) = object.get(&key.name) else {
            continue;
        };
        seen.insert(key.path.clone());
        if v.is_null() || key.children.is_empty() && key.shape != Shape::Counts {
            continue;
        }
        let here = format!("{at}.{}", key.name);
        match key.shape {
            Shape::Plain => compare(v, &key.children, &here, seen, wrong),
            Shape::Named => match v.as_object() {
                Some(map) => {
                    for (name, item) in map {
                        compare(item, &key.children, &format!("{here}.{name}"), seen, wrong);
                    }
                }
                None => wrong.push(format!("{here}: not an object: {v}")),
            },
            Shape::Array => match v.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        compare(item, &key.children, &format!("{here}[{i}]"), seen, wrong);
                    }
                }
                None => wrong.push(format!("{here}: not an array: {v}")),
            },
            Shape::Counts => {
                let numbers = v.as_object().map(|m| m.values().all(Value::is_number));
                if numbers != Some(true) {
                    wrong.push(format!("{here}: not an object of numbers: {v}"));
                }
            }
        }
    }
}

/// Every documented key's path, but the optional ones.
fn required(keys: &[Key], out: &mut BTreeSet<String>) {
    for key in keys {
        if !key.optional {
            out.insert(key.path.clone());
        }
        required(&key.children, out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_every_documented_key() {
    let database = TempDatabase::create().await;
    let repo = Repo::new()
        .fake(
            "m",
            "replicas = 1\nmax_batch_size = 4\nbatch_window_ms = 7\nmemory_mb = 100\n",
        )
        // A latency target nothing here comes near: its figures are sent.
        .fake(
            "on-gpu",
            "device = \"gpu\"\nmemory_mb = 100\nlatency_target_ms = 60000\n",
        )
        .fake("too-big", "device = \"cpu\"\nmemory_mb = 100000\n")
        // Leaves memory after a second idle: a residency decision.
        .fake("idle", "min_replicas = 0\ndownscale_delay_s = 1\n")
        .fake("bad", "replicas = \"many\"\n");
    let mut provider = FakeProvider::new(
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(2), Duration::ZERO),
    );
    provider.gpu_support = Ok(());
    let gpus = Arc::new(FixedInventory::with_gpus(&[8000]));
    let mut config = crate::common::config(repo.path());
    config.cache.redis_url = "redis://127.0.0.1:6379".into();
    config.store.database_url = database.url();
    config.store.flush_ms = 20;
    config.memory.min_residency_ms = 0;
    let server = TestServer::start_with_gpus(config, Arc::new(provider), Some(gpus));
    crate::common::live::until(&server, "m and on-gpu ready", |s| {
        s["model_pools"]["m"]["ready"] == true && s["model_pools"]["on-gpu"]["ready"] == true
    })
    .await;
    // Traffic: successes (batched), a cache hit, an unknown model.
    let run = uuid::Uuid::new_v4().as_u128() % 1_000_000;
    let answers = futures_util::future::join_all((0..3).map(|i| {
        let body = json!({"model": "m", "inputs": {"x": tensor(&[1, 4], "FP32", json!([run as f64, i, 0, 0]))}});
        let server = &server;
        async move { server.post("/api/optimized/predict", &body).await }
    }))
    .await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    let again = json!({"model": "m", "inputs": {"x": tensor(&[1, 4], "FP32", json!([run as f64, 0, 0, 0]))}});
    assert_eq!(server.post("/api/optimized/predict", &again).await.0, 200);
    let unknown =
        json!({"model": "nope", "inputs": {"x": tensor(&[1, 4], "FP32", json!([1, 0, 0, 0]))}});
    assert_eq!(server.post("/api/optimized/predict", &unknown).await.0, 404);
    let stats = crate::common::live::until(&server, "the log's rows written, idle gone", |s| {
        s["connection_pools"]["postgres"]["rows_written"].as_u64() >= Some(4)
            && s["model_pools"]["idle"]["residency"] == "cold"
    })
    .await;

    let keys = documented();
    let (mut seen, mut wrong) = (BTreeSet::new(), Vec::new());
    compare(&stats, &keys, "stats", &mut seen, &mut wrong);
    let mut expected = BTreeSet::new();
    required(&keys, &mut expected);
    let missing: Vec<_> = expected.difference(&seen).collect();
    assert!(
        wrong.is_empty() && missing.is_empty(),
        "stats and docs/operations.md disagree:\n{}\ndocumented, never sent: {missing:?}\n{stats:#}",
        wrong.join("\n")
    );

    // And the values say what happened.
    let batcher = &stats["model_pools"]["m"]["batcher"];
    assert_eq!(
        (
            batcher["items"].as_u64(),
            batcher["max_batch_size"].as_u64()
        ),
        (Some(3), Some(4))
    );
    assert_eq!(batcher["window_ms"], 7);
    let perf = &stats["performance_metrics"];
    assert_eq!(
        (
            perf["requests_total"].as_u64(),
            perf["errors_total"].as_u64()
        ),
        (Some(5), Some(1))
    );
    assert_eq!(stats["cache"]["l1"]["hits"], 1);
    assert_eq!(stats["memory"]["refused"][0]["replica"], "too-big/0");
    assert!(stats["failed_models"]["bad"].is_string(), "{stats}");
    assert_eq!(stats["memory"]["devices"][1]["name"], "test GPU 0");
}
