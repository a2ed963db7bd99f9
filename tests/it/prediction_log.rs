//! The prediction log through the server: every outcome is recorded under a
//! prediction id of its own (clients reusing a request id lose nothing), can
//! be looked up by that id without credentials and by a client's request id
//! only with the admin token; an existing database is upgraded in place; and
//! a PostgreSQL outage costs no request and no row: health turns degraded,
//! rows wait in the buffer, and all are written once the database is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::database::{connect, TempDatabase};
use crate::common::postgres::Cluster;
use crate::common::{tensor, Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::{json, Value};

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

/// A look-up, with the admin token when one is given: status and body.
async fn lookup(server: &TestServer, id: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = server
        .client
        .get(server.url(&format!("/api/optimized/predictions/{id}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Polls the lookup endpoint until the record is there.
async fn record(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = lookup(server, id, None).await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 404, "{body}");
        assert!(Instant::now() < deadline, "{id} was never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls stats until the log has written `rows` rows and holds none.
async fn written(server: &TestServer, rows: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.stats().await;
        let pool = stats["connection_pools"]["postgres"].clone();
        if pool["status"] == "up"
            && pool["rows_written"].as_u64() >= Some(rows)
            && pool["buffer_depth"] == 0
        {
            return pool;
        }
        assert!(Instant::now() < deadline, "rows never written: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_logged_and_can_be_looked_up() {
    let database = TempDatabase::create().await;
    let repo = Repo::new().fake("m", "");
    let mut config = crate::common::config(repo.path());
    config.store.database_url = database.url();
    config.store.flush_ms = 20;
    let server = TestServer::ready(config, provider()).await;
    let run = uuid::Uuid::new_v4();
    let value = (run.as_u128() % 1_000_000) as f64;

    let ran = format!("{run}");
    let (status, answer) = predict(&server, &ran, &body(value)).await;
    assert_eq!(status, 200);
    let ran_id = answer["prediction_id"].as_str().unwrap().to_string();
    let cached = format!("cached-{run}");
    let (_, answer) = predict(&server, &cached, &body(value)).await;
    assert_eq!(answer["cache"], "l1");
    let cached_id = answer["prediction_id"].as_str().unwrap().to_string();
    let failed = format!("failed-{run}");
    let bad = json!({"model": "m", "inputs": {"x": tensor(&[1, 2], "FP32", json!([1, 2]))}});
    let r = server
        .client
        .post(server.url("/api/optimized/predict"))
        .header("x-request-id", &failed)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let failed_id = r.headers()["x-prediction-id"].to_str().unwrap().to_string();

    let logged = record(&server, &ran_id).await;
    assert_eq!(logged["prediction_id"], ran_id);
    assert_eq!(logged["request_id"], ran);
    assert_eq!(logged["request_id_from_client"], true);
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

    let hit = record(&server, &cached_id).await;
    assert_eq!(hit["cache_level"], "l1");
    assert_eq!(hit["input_sha256"], logged["input_sha256"]);
    let error = record(&server, &failed_id).await;
    assert_eq!(
        (error["status"].as_str(), error["http_status"].as_u64()),
        (Some("error"), Some(422))
    );
    assert!(error["error"].as_str().unwrap().contains("shape"));

    // A client's request id lists its records (this server has no admin
    // token, and the test is a loopback client).
    let (status, listed) = lookup(&server, &cached, None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["predictions"][0]["prediction_id"], cached_id);

    // A request id the server made is found without credentials, as before.
    let r = server
        .client
        .post(server.url("/api/optimized/predict"))
        .json(&body(value + 1.0))
        .send()
        .await
        .unwrap();
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let by_request = record(&server, &made).await;
    assert_eq!(by_request["request_id"], made);
    assert_eq!(by_request["request_id_from_client"], false);

    let (status, body) = lookup(&server, &format!("none-{run}"), None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    // Lookups also find rows still buffered; wait for the writer.
    written(&server, 4).await;
    let (_, health) = server.get("/api/optimized/health").await;
    assert_eq!(health["dependencies"]["postgres"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_keeps_every_row_and_needs_the_admin_token() {
    let database = TempDatabase::create().await;
    let repo = Repo::new().fake("m", "");
    let mut config = crate::common::config(repo.path());
    config.store.database_url = database.url();
    config.store.flush_ms = 20;
    config.server.admin_token = "s3cret".into();
    let server = TestServer::ready(config, provider()).await;

    let mut ids = Vec::new();
    for i in 0..100 {
        let (status, answer) = predict(&server, "order-1234", &body(f64::from(i))).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["request_id"], "order-1234");
        ids.push(
            answer["prediction_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }

    let pool = written(&server, 100).await;
    assert_eq!(
        (pool["rows_written"].as_u64(), pool["rows_dropped"].as_u64()),
        (Some(100), Some(0)),
        "{pool}"
    );
    let client = connect(&database.url()).await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM predictions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 100);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 100, "every prediction has an id of its own");

    // A guessable id reveals nothing without the token...
    let (status, body) = lookup(&server, "order-1234", None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = lookup(&server, "order-1234", Some("wrong")).await;
    assert_eq!(status, 401);
    // ... and lists every record with it.
    let (status, listed) = lookup(&server, "order-1234", Some("s3cret")).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["request_id"], "order-1234");
    let listed: Vec<&str> = listed["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prediction_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    // A prediction id needs no token.
    let (status, one) = lookup(&server, &ids[42], None).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        (one["prediction_id"].as_str(), one["request_id"].as_str()),
        (Some(ids[42].as_str()), Some("order-1234"))
    );
    assert_eq!(one["input_sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_first_schema_is_upgraded_in_place() {
    let database = TempDatabase::create().await;
    let client = connect(&database.url()).await;
    // The schema as version 1 left it, with two rows: one keyed by a UUID
    // request id, one by the v5 UUID of a client's own id.
    client
        .batch_execute(gantry::store::migrations::MIGRATIONS[0].sql)
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE gantry_migrations (version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO gantry_migrations (version) VALUES (1);",
        )
        .await
        .unwrap();
    let by_uuid = uuid::Uuid::new_v4();
    let by_name = gantry::request_id::as_uuid("order-7");
    for key in [by_uuid, by_name] {
        client
            .execute(
                "INSERT INTO predictions (request_id, model, model_version, input_sha256, \
                 status, http_status, total_ms, created_at) \
                 VALUES ($1, 'm', 'v', 'ab', 'ok', 200, 1.5, now())",
                &[&key],
            )
            .await
            .unwrap();
    }

    let repo = Repo::new().fake("m", "");
    let mut config = crate::common::config(repo.path());
    config.store.database_url = database.url();
    config.store.flush_ms = 20;
    config.server.admin_token = "s3cret".into();
    let server = TestServer::ready(config, provider()).await;
    let (status, answer) = predict(&server, "order-7", &body(7.0)).await;
    assert_eq!(status, 200);
    written(&server, 1).await;

    let old = record(&server, &by_uuid.to_string()).await;
    assert_eq!(
        (old["prediction_id"].as_str(), old["request_id"].clone()),
        (Some(by_uuid.to_string().as_str()), Value::Null)
    );
    let (status, listed) = lookup(&server, "order-7", Some("s3cret")).await;
    assert_eq!(status, 200, "{listed}");
    let keys: Vec<&str> = listed["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prediction_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            by_name.to_string().as_str(),
            answer["prediction_id"].as_str().unwrap()
        ],
        "the old row of that id and the new one"
    );
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM gantry_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM predictions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 3, "no row lost in the upgrade");
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
    let mut config = crate::common::config(repo.path());
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
