//! The prediction log against real PostgreSQL: rows are written within a
//! bounded time and read back field for field, migrations are applied once
//! however many instances start, and a PostgreSQL of the test's own (a
//! throw-away cluster) can die and come back without losing a row. Needs
//! PostgreSQL at `GANTRY_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, trust auth) and the server
//! binaries under `/usr/lib/postgresql/*/bin`; fails, never skips, without
//! them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::database::{admin_url as database_url, connect};
use crate::common::postgres::{free_port, Cluster};
use gantry::store::migrations::{self, MIGRATIONS};
use gantry::store::{
    PredictionLog, PredictionRow, StoreConfig, StoreError, StoreStats, StoredPrediction,
};
use uuid::Uuid;

fn config(url: &str) -> StoreConfig {
    StoreConfig {
        database_url: url.to_string(),
        flush_ms: 50,
        batch_rows: 100,
        buffer_rows: 10_000,
        pool_size: 2,
        ..StoreConfig::default()
    }
}

/// Now, to the microsecond (what `timestamptz` keeps).
fn now() -> SystemTime {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    UNIX_EPOCH + Duration::from_micros(since.as_micros() as u64)
}

/// A row with every field set, varied by `i` (some optional fields empty).
fn row(model: &str, i: u32) -> PredictionRow {
    let failed = i % 3 == 2;
    PredictionRow {
        prediction_id: Uuid::new_v4(),
        request_id: format!("order-{i}"),
        request_id_from_client: i.is_multiple_of(2),
        model: model.to_string(),
        model_version: format!("v{i}"),
        input_sha256: format!("{:064x}", u64::from(i) * 0x9e37_79b9),
        status: if failed { "error" } else { "ok" },
        http_status: if failed { 504 } else { 200 },
        error: failed.then(|| format!("deadline exceeded #{i}")),
        queue_ms: (!failed).then_some(0.125 * f64::from(i)),
        inference_ms: (!failed).then_some(1.5 + f64::from(i)),
        total_ms: 2.75 + f64::from(i),
        batch_size: (!failed).then_some(i % 8 + 1),
        replica: (!failed).then_some(i % 2),
        cache_level: match i % 3 {
            0 => Some("l1"),
            1 => Some("l2"),
            _ => None,
        },
        created_at: now() - Duration::from_millis(u64::from(i)),
        trace: None,
    }
}

/// A model name of this run alone, so counts never see other runs' rows.
fn unique_model(test: &str) -> String {
    format!("store-test-{test}-{}", Uuid::new_v4())
}

async fn wait_for(
    log: &PredictionLog,
    within: Duration,
    what: &str,
    done: impl Fn(&StoreStats) -> bool,
) {
    let started = Instant::now();
    loop {
        let stats = log.stats();
        if done(&stats) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "not {what} within {within:?}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(client: &tokio_postgres::Client, model: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM predictions WHERE model = $1",
            &[&model],
        )
        .await
        .expect("count query")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_written_and_read_back_field_for_field() {
    let url = database_url();
    let client = connect(&url).await;
    let log = PredictionLog::start(config(&url)).expect("log starts");
    let model = unique_model("roundtrip");
    let rows: Vec<PredictionRow> = (0..25).map(|i| row(&model, i)).collect();
    let started = Instant::now();
    for row in &rows {
        log.record(row.clone());
    }
    wait_for(&log, Duration::from_secs(5), "written", |s| {
        s.buffer_depth == 0 && s.rows_written >= 25 && s.status == "up"
    })
    .await;
    assert_eq!(count(&client, &model).await, 25);
    assert!(started.elapsed() < Duration::from_secs(5));

    for row in &rows {
        let stored = log
            .get(row.prediction_id)
            .await
            .expect("get answers")
            .unwrap_or_else(|| panic!("row {} is stored", row.prediction_id));
        assert_eq!(stored, StoredPrediction::from(row.clone()));
    }
    assert_eq!(log.get(Uuid::new_v4()).await.expect("get answers"), None);

    // The JSON shape the HTTP API answers.
    let stored = log
        .get(rows[0].prediction_id)
        .await
        .expect("get")
        .expect("row");
    let json = serde_json::to_value(&stored).expect("serializes");
    assert_eq!(json["prediction_id"], rows[0].prediction_id.to_string());
    assert_eq!(json["model"], model.as_str());
    assert_eq!(json["cache_level"], "l1");
    assert_eq!(json["total_ms"], 2.75);
    let created_at = json["created_at"].as_str().expect("a string");
    assert!(
        created_at.len() == 27 && created_at.ends_with('Z') && created_at.as_bytes()[10] == b'T',
        "RFC 3339: {created_at}"
    );

    // A prediction id recorded again (a batch written again after its
    // commit went unacknowledged) keeps the first record.
    let mut again = row(&model, 7);
    again.prediction_id = rows[0].prediction_id;
    log.record(again);
    log.flush(Duration::from_secs(5)).await;
    let stored = log
        .get(rows[0].prediction_id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(stored, StoredPrediction::from(rows[0].clone()));
    assert_eq!(count(&client, &model).await, 25);
    assert_eq!(
        (log.stats().rows_written, log.stats().rows_already_stored),
        (25, 1)
    );

    // Text PostgreSQL cannot hold (NUL) is stored, not a poison row.
    let mut odd = row(&model, 2);
    odd.error = Some("bad\0byte".into());
    log.record(odd.clone());
    log.flush(Duration::from_secs(5)).await;
    assert_eq!(log.stats().buffer_depth, 0);
    let stored = log.get(odd.prediction_id).await.expect("get").expect("row");
    assert_eq!(stored.error.as_deref(), Some("bad\u{FFFD}byte"));
    assert_eq!(log.stats().rows_dropped, 0);

    client
        .execute("DELETE FROM predictions WHERE model = $1", &[&model])
        .await
        .expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_rows_are_found_and_flushed_on_demand() {
    let url = database_url();
    let client = connect(&url).await;
    let log = PredictionLog::start(StoreConfig {
        flush_ms: 60_000,
        batch_rows: 1_000,
        ..config(&url)
    })
    .expect("log starts");
    wait_for(&log, Duration::from_secs(5), "up", |s| s.status == "up").await;
    let model = unique_model("buffered");
    let rows: Vec<PredictionRow> = (0..3).map(|i| row(&model, i)).collect();
    for row in &rows {
        log.record(row.clone());
    }
    assert_eq!(log.stats().buffer_depth, 3);
    // Not written yet (the next tick is a minute away), yet found.
    let stored = log
        .get(rows[1].prediction_id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(stored, StoredPrediction::from(rows[1].clone()));
    assert_eq!(count(&client, &model).await, 0);

    let started = Instant::now();
    log.flush(Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let stats = log.stats();
    assert_eq!(
        (stats.buffer_depth, stats.rows_written),
        (0, 3),
        "{stats:?}"
    );
    assert_eq!(count(&client, &model).await, 3);
    let stored = log
        .get(rows[2].prediction_id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(stored, StoredPrediction::from(rows[2].clone()));

    client
        .execute("DELETE FROM predictions WHERE model = $1", &[&model])
        .await
        .expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_however_many_instances_start() {
    let database = crate::common::database::TempDatabase::create().await;
    let url = database.url();
    // Three instances race on an empty database.
    let logs: Vec<Arc<PredictionLog>> = (0..3)
        .map(|_| PredictionLog::start(config(&url)).expect("log starts"))
        .collect();
    for log in &logs {
        wait_for(log, Duration::from_secs(10), "up", |s| s.status == "up").await;
    }
    let mut client = connect(&url).await;
    let recorded = client
        .query(
            "SELECT version, applied_at FROM gantry_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("gantry_migrations exists");
    let versions: Vec<i32> = recorded.iter().map(|r| r.get(0)).collect();
    let expected: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, expected);
    let applied_at: Vec<SystemTime> = recorded.iter().map(|r| r.get(1)).collect();

    // Applying again, directly or by another start, changes nothing.
    assert_eq!(
        migrations::apply(&mut client).await.expect("migrates"),
        Vec::<i32>::new()
    );
    let again = PredictionLog::start(config(&url)).expect("log starts");
    wait_for(&again, Duration::from_secs(5), "up", |s| s.status == "up").await;
    let after: Vec<SystemTime> = client
        .query(
            "SELECT applied_at FROM gantry_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(after, applied_at);

    // Each instance writes to the one table.
    let model = unique_model("instances");
    for log in logs.iter().chain([&again]) {
        log.record(row(&model, 0));
    }
    for log in logs.iter().chain([&again]) {
        log.flush(Duration::from_secs(5)).await;
    }
    assert_eq!(count(&client, &model).await, 4);
    drop(logs);
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_and_counts_new_rows() {
    // Nothing listens on this port: PostgreSQL is down from the start, and
    // starting the log still succeeds.
    let url = format!("postgres://postgres@127.0.0.1:{}/gantry", free_port());
    let log = PredictionLog::start(StoreConfig {
        buffer_rows: 5,
        ..config(&url)
    })
    .expect("starts with PostgreSQL down");
    let rows: Vec<PredictionRow> = (0..8).map(|i| row("full", i)).collect();
    for row in &rows {
        log.record(row.clone());
    }
    let stats = log.stats();
    assert_eq!(stats.status, "down");
    assert_eq!(stats.buffer_depth, 5);
    assert_eq!(stats.rows_dropped, 3);
    assert_eq!(stats.rows_written, 0);

    // Buffered rows are found; a dropped one cannot be, and says why.
    let stored = log.get(rows[4].prediction_id).await.expect("buffered");
    assert_eq!(stored, Some(StoredPrediction::from(rows[4].clone())));
    match log.get(rows[7].prediction_id).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // Flushing gives up at its timeout.
    let started = Instant::now();
    log.flush(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(log.stats().buffer_depth, 5);
}

#[test]
fn start_refuses_a_bad_url_and_a_missing_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        for url in ["postgres://127.0.0.1:notaport/db", "", "host=/tmp port=x"] {
            match PredictionLog::start(StoreConfig::new(url)) {
                Err(StoreError::InvalidUrl(_)) => {}
                other => panic!("{url:?}: expected InvalidUrl, got {other:?}"),
            }
        }
    });
    match PredictionLog::start(StoreConfig::new(database_url())) {
        Err(StoreError::NoRuntime) => {}
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}

/// Runs a blocking cluster operation off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_recorded_while_postgres_is_down_are_written_when_it_returns() {
    let cluster = Arc::new(blocking(Cluster::create).await);
    let url = cluster.url();
    // The log starts before PostgreSQL does: it buffers, then migrates and
    // writes once the server is up.
    let log = PredictionLog::start(config(&url)).expect("log starts");
    let model = unique_model("fault");
    for i in 0..30 {
        log.record(row(&model, i));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.stats().status, "down");
    assert_eq!(log.stats().buffer_depth, 30);
    let c = cluster.clone();
    blocking(move || c.start()).await;
    wait_for(&log, Duration::from_secs(5), "written", |s| {
        s.rows_written == 30 && s.buffer_depth == 0 && s.status == "up"
    })
    .await;

    let c = cluster.clone();
    assert!(blocking(move || c.stop()).await, "pg_ctl stop");

    // Recording while PostgreSQL is down buffers, and never waits.
    let down: Vec<PredictionRow> = (30..70).map(|i| row(&model, i)).collect();
    let started = Instant::now();
    for row in &down {
        log.record(row.clone());
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(50), "40 records took {took:?}");
    wait_for(&log, Duration::from_secs(5), "down", |s| {
        s.status == "down" && s.buffer_depth == 40
    })
    .await;
    assert_eq!(log.stats().rows_written, 30);
    // Buffered rows are still found; others cannot be looked up.
    let stored = log.get(down[0].prediction_id).await.expect("buffered");
    assert_eq!(stored, Some(StoredPrediction::from(down[0].clone())));
    assert!(log.get(Uuid::new_v4()).await.is_err());

    let c = cluster.clone();
    blocking(move || c.start()).await;
    wait_for(&log, Duration::from_secs(10), "caught up", |s| {
        s.rows_written == 70 && s.buffer_depth == 0 && s.status == "up"
    })
    .await;
    let client = connect(&url).await;
    assert_eq!(count(&client, &model).await, 70);
    let stored = log.get(down[39].prediction_id).await.expect("get");
    assert_eq!(stored, Some(StoredPrediction::from(down[39].clone())));
    assert_eq!(log.stats().rows_dropped, 0);

    drop(client);
    drop(log);
    let c = cluster.clone();
    assert!(blocking(move || c.stop()).await, "pg_ctl stop");
}
