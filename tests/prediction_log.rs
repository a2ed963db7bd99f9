//! The prediction log through the server: every outcome is recorded and can
//! be looked up by request id, and a PostgreSQL outage costs no request and
//! no row: health turns degraded, rows wait in the buffer, and all are
//! written once the database is back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::Cluster;
use common::{tensor, Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::{json, Value};

const SHARED_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";

fn provider() -> Arc<FakeProvider> {
    Arc::new(FakeProvider::new(FakeEngineFactory::vector(4)))
}

fn body(value: f64) -> Value {
    json!({"model": "m", "inputs": {"x": tensor(&[1, 4], "FP32", json!([value, 0, 0, 0]))}})
}

async fn predict(server: &TestServer, id: &str, body: &Value) -> (u16, Value) {
    let r = server
        .client
        .post(server.url("/api/optimized/predict"))
        .header("x-request-id", id)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Polls the lookup endpoint until the record is there.
async fn record(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server
            .get(&format!("/api/optimized/predictions/{id}"))
            .await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 404, "{body}");
        assert!(Instant::now() < deadline, "{id} was never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_logged_and_can_be_looked_up() {
    let repo = Repo::new().fake("m", "");
    let mut config = common::config(repo.path());
    config.store.database_url = SHARED_DATABASE.into();
    config.store.flush_ms = 20;
    let server = TestServer::ready(config, provider()).await;
    let run = uuid::Uuid::new_v4();
    let value = (run.as_u128() % 1_000_000) as f64;

    let ran = format!("{run}");
    let (status, _) = predict(&server, &ran, &body(value)).await;
    assert_eq!(status, 200);
    let cached = format!("cached-{run}");
    let (_, answer) = predict(&server, &cached, &body(value)).await;
    assert_eq!(answer["cache"], "l1");
    let failed = format!("failed-{run}");
    let bad = json!({"model": "m", "inputs": {"x": tensor(&[1, 2], "FP32", json!([1, 2]))}});
    let (status, _) = predict(&server, &failed, &bad).await;
    assert_eq!(status, 422);

    let logged = record(&server, &ran).await;
    assert_eq!(logged["request_id"], ran);
    assert_eq!(
        (logged["model"].as_str(), logged["status"].as_str()),
        (Some("m"), Some("ok"))
    );
    assert_eq!(
        (
            logged["http_status"].as_u64(),
            logged["batch_size"].as_u64()
        ),
        (Some(200), Some(1))
    );
    assert_eq!(logged["input_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(logged["model_version"].as_str().unwrap().len(), 64);
    assert!(logged["total_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(logged["cache_level"], Value::Null);

    let hit = record(&server, &cached).await;
    assert_eq!(hit["cache_level"], "l1");
    assert_eq!(hit["input_sha256"], logged["input_sha256"]);
    let error = record(&server, &failed).await;
    assert_eq!(
        (error["status"].as_str(), error["http_status"].as_u64()),
        (Some("error"), Some(422))
    );
    assert!(error["error"].as_str().unwrap().contains("shape"));

    let (status, body) = server
        .get(&format!("/api/optimized/predictions/none-{run}"))
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    // Lookups also find rows still buffered; wait for the writer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.stats().await;
        let pool = &stats["connection_pools"]["postgres"];
        if pool["status"] == "up" && pool["rows_written"].as_u64().unwrap() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "rows never written: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, health) = server.get("/api/optimized/health").await;
    assert_eq!(health["dependencies"]["postgres"], "up");
}

async fn health_shows(server: &TestServer, postgres: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, health) = server.get("/api/optimized/health").await;
        if health["dependencies"]["postgres"] == postgres {
            assert_eq!(
                (code, health["status"].as_str()),
                (200, Some(status)),
                "{health}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "postgres never {postgres}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_costs_no_request_and_no_row() {
    // pg_ctl blocks for a moment; this multi-threaded runtime can afford it.
    let cluster = Cluster::create();
    cluster.start();
    let repo = Repo::new().fake("m", "");
    let mut config = common::config(repo.path());
    config.store.database_url = cluster.url();
    config.store.flush_ms = 20;
    let server = TestServer::ready(config, provider()).await;
    health_shows(&server, "up", "ok").await;

    let mut sent = 0;
    for _ in 0..5 {
        let (status, _) = predict(
            &server,
            &uuid::Uuid::new_v4().to_string(),
            &body(sent as f64),
        )
        .await;
        assert_eq!(status, 200);
        sent += 1;
    }
    assert!(cluster.stop(), "pg_ctl stop");
    for _ in 0..20 {
        let (status, answer) = predict(
            &server,
            &uuid::Uuid::new_v4().to_string(),
            &body(sent as f64),
        )
        .await;
        assert_eq!(status, 200, "an outage must cost no request: {answer}");
        sent += 1;
    }
    health_shows(&server, "down", "degraded").await;
    let buffered = server.stats().await["connection_pools"]["postgres"]["buffer_depth"]
        .as_u64()
        .unwrap();
    assert!(buffered > 0, "rows wait in the buffer");

    cluster.start();
    health_shows(&server, "up", "ok").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    loop {
        let rows: i64 = client
            .query_one("SELECT count(*) FROM predictions", &[])
            .await
            .unwrap()
            .get(0);
        if rows == sent {
            break;
        }
        assert!(Instant::now() < deadline, "{rows} of {sent} rows written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = &server.stats().await["connection_pools"]["postgres"];
    assert_eq!(
        (pool["rows_dropped"].as_u64(), pool["buffer_depth"].as_u64()),
        (Some(0), Some(0)),
        "{pool}"
    );
}
