//! The background writer: migrates on first contact, then writes the buffer
//! in batches every `flush_ms` (or when a batch is full), backs off while
//! PostgreSQL is down, and probes it when idle so `status` stays true. Also
//! the one query that reads a row back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Client, Object, Pool, PoolError};
use tokio_postgres::error::SqlState;
use tracing::Instrument;
use uuid::Uuid;

use super::{migrations, PredictionRow, Shared, StoreError, StoredPrediction, UP};

/// Longest one INSERT (or the migrations, or a probe) may take before its
/// connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often an idle writer checks that PostgreSQL still answers.
const PROBE_EVERY: Duration = Duration::from_secs(2);

const INSERT: &str = "INSERT INTO predictions (prediction_id, request_id, \
     request_id_from_client, model, model_version, input_sha256, status, http_status, error, \
     queue_ms, inference_ms, total_ms, batch_size, replica, cache_level, created_at) \
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::text[], \
     $6::text[], $7::text[], $8::int4[], $9::text[], $10::float8[], $11::float8[], \
     $12::float8[], $13::int4[], $14::int4[], $15::text[], $16::timestamptz[]) \
     ON CONFLICT (prediction_id) DO NOTHING";

const COLUMNS: &str = "prediction_id, request_id, request_id_from_client, model, \
     model_version, input_sha256, status, http_status, error, queue_ms, inference_ms, total_ms, \
     batch_size, replica, cache_level, created_at";

/// Rows by their key, and by a request id the server made
/// (`$3` false) or any request id (`$3` true), oldest first.
const SELECT: &str = "WHERE prediction_id = $1 \
     OR (request_id = $2 AND ($3 OR NOT request_id_from_client)) \
     ORDER BY created_at, prediction_id LIMIT $4";

/// Why a write, a probe or the migrations failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl WriteError {
    /// The table is missing (dropped behind our back): migrate again.
    fn needs_migration(&self) -> bool {
        matches!(self, WriteError::Db(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE))
    }
}

/// The writer task; returns when the log's handle is dropped.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut backoff = FIRST_BACKOFF;
    let mut migrated = false;
    let mut last_contact = Instant::now();
    loop {
        if shared.is_closed() {
            return;
        }
        let outcome = if !migrated {
            migrate(&shared.pool).await.map(|_| migrated = true)
        } else if shared.depth.load(Ordering::Relaxed) > 0 {
            write_buffered(&shared).await
        } else if shared.state.load(Ordering::Relaxed) != UP
            || last_contact.elapsed() >= PROBE_EVERY
        {
            probe(&shared.pool).await
        } else {
            Ok(())
        };
        match outcome {
            Ok(()) => {
                shared.mark_up();
                backoff = FIRST_BACKOFF;
                last_contact = Instant::now();
            }
            Err(error) => {
                if error.needs_migration() {
                    migrated = false;
                }
                shared.mark_down(&error);
                let delay = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.shutdown.notified() => {}
                }
                continue;
            }
        }
        // Sleep until the next tick, a full batch, a flush request or
        // shutdown; after a write that found no rows, too.
        tokio::select! {
            _ = tokio::time::sleep(shared.flush_every) => {}
            _ = shared.batch_ready.notified() => {}
            _ = shared.flush_now.notified() => {}
            _ = shared.shutdown.notified() => {}
        }
    }
}

async fn migrate(pool: &Pool) -> Result<(), WriteError> {
    let mut client = pool.get().await?;
    let outcome = tokio::time::timeout(WRITE_TIMEOUT, migrations::apply(&mut client)).await;
    settle(client, outcome).map(drop)
}

async fn probe(pool: &Pool) -> Result<(), WriteError> {
    let client = pool.get().await?;
    let outcome = tokio::time::timeout(WRITE_TIMEOUT, client.simple_query("SELECT 1")).await;
    settle(client, outcome).map(drop)
}

/// The result of a bounded query; a failed or timed-out connection is
/// given up as [`give_up`] decides.
fn settle<T>(
    client: Client,
    outcome: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
) -> Result<T, WriteError> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(give_up(client, e.into())),
        Err(_elapsed) => Err(give_up(client, WriteError::Timeout(WRITE_TIMEOUT))),
    }
}

/// Writes the rows buffered now (not those that arrive meanwhile, which
/// wait for the next tick), `batch_rows` at a time, removing each batch from
/// the buffer once it is committed.
async fn write_buffered(shared: &Shared) -> Result<(), WriteError> {
    let mut left = shared.depth.load(Ordering::Relaxed);
    while left > 0 {
        let rows = shared.peek(shared.batch_rows.min(left));
        if rows.is_empty() {
            break;
        }
        // In a trace, the write is a span linked to every request it stores.
        let span = tracing::info_span!("prediction_log.write", rows = rows.len());
        if crate::telemetry::enabled() {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            for context in rows.iter().filter_map(|row| row.trace.clone()) {
                span.add_link(context);
            }
        }
        let counts = write_batch(&shared.pool, &rows).instrument(span).await?;
        shared.consume(rows.len());
        shared
            .rows_written
            .fetch_add(counts.written, Ordering::Relaxed);
        shared
            .rows_already_stored
            .fetch_add(counts.already_stored, Ordering::Relaxed);
        shared
            .rows_dropped
            .fetch_add(counts.rejected, Ordering::Relaxed);
        shared.dropping.store(false, Ordering::Relaxed);
        shared.mark_up();
        left = left.saturating_sub(rows.len());
    }
    Ok(())
}

/// What became of a batch of rows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Written {
    /// Rows the INSERT stored.
    written: u64,
    /// Rows whose `prediction_id` was stored already: a batch written again
    /// after its commit went unacknowledged.
    already_stored: u64,
    /// Rows PostgreSQL refused for their data.
    rejected: u64,
}

impl Written {
    fn of(batch: usize, inserted: u64) -> Written {
        Written {
            written: inserted,
            already_stored: (batch as u64).saturating_sub(inserted),
            rejected: 0,
        }
    }
}

/// Inserts `rows` in one statement and counts what PostgreSQL reports it
/// stored. When PostgreSQL refuses the batch for its data (a row it cannot
/// store), the rows are inserted one by one and those it refuses are logged
/// and rejected, so one bad row never blocks the log.
async fn write_batch(pool: &Pool, rows: &[PredictionRow]) -> Result<Written, WriteError> {
    let client = pool.get().await?;
    match insert(&client, rows).await {
        Ok(inserted) => Ok(Written::of(rows.len(), inserted)),
        Err(WriteError::Db(e)) if is_data_error(&e) && rows.len() > 1 => {
            let mut counts = Written::default();
            for row in rows {
                match insert(&client, std::slice::from_ref(row)).await {
                    Ok(inserted) => {
                        let one = Written::of(1, inserted);
                        counts.written += one.written;
                        counts.already_stored += one.already_stored;
                    }
                    Err(WriteError::Db(e)) if is_data_error(&e) => {
                        reject(row, &e);
                        counts.rejected += 1;
                    }
                    Err(e) => return Err(give_up(client, e)),
                }
            }
            Ok(counts)
        }
        Err(WriteError::Db(e)) if is_data_error(&e) => {
            if let Some(row) = rows.first() {
                reject(row, &e);
            }
            Ok(Written {
                rejected: rows.len() as u64,
                ..Written::default()
            })
        }
        Err(e) => Err(give_up(client, e)),
    }
}

/// Inserts `rows`; answers how many PostgreSQL stored (those whose key was
/// stored already are skipped).
async fn insert(client: &Client, rows: &[PredictionRow]) -> Result<u64, WriteError> {
    let write = async {
        let statement = client.prepare_cached(INSERT).await?;
        let prediction_id: Vec<Uuid> = rows.iter().map(|r| r.prediction_id).collect();
        let request_id: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        let from_client: Vec<bool> = rows.iter().map(|r| r.request_id_from_client).collect();
        let model: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
        let model_version: Vec<&str> = rows.iter().map(|r| r.model_version.as_str()).collect();
        let input_sha256: Vec<&str> = rows.iter().map(|r| r.input_sha256.as_str()).collect();
        let status: Vec<&str> = rows.iter().map(|r| r.status).collect();
        let http_status: Vec<i32> = rows.iter().map(|r| i32::from(r.http_status)).collect();
        let error: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
        let queue_ms: Vec<Option<f64>> = rows.iter().map(|r| r.queue_ms).collect();
        let inference_ms: Vec<Option<f64>> = rows.iter().map(|r| r.inference_ms).collect();
        let total_ms: Vec<f64> = rows.iter().map(|r| r.total_ms).collect();
        let batch_size: Vec<Option<i32>> = rows.iter().map(|r| r.batch_size.map(to_i32)).collect();
        let replica: Vec<Option<i32>> = rows.iter().map(|r| r.replica.map(to_i32)).collect();
        let cache_level: Vec<Option<&str>> = rows.iter().map(|r| r.cache_level).collect();
        let created_at: Vec<std::time::SystemTime> = rows.iter().map(|r| r.created_at).collect();
        client
            .execute(
                &statement,
                &[
                    &prediction_id,
                    &request_id,
                    &from_client,
                    &model,
                    &model_version,
                    &input_sha256,
                    &status,
                    &http_status,
                    &error,
                    &queue_ms,
                    &inference_ms,
                    &total_ms,
                    &batch_size,
                    &replica,
                    &cache_level,
                    &created_at,
                ],
            )
            .await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => Ok(result?),
        Err(_elapsed) => Err(WriteError::Timeout(WRITE_TIMEOUT)),
    }
}

/// What a look-up asks for.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// A row's key, when the id names one.
    pub prediction_id: Option<Uuid>,
    /// Rows of this request id...
    pub request_id: &'a str,
    /// ... also when the client chose it (else only when the server made it).
    pub client_chosen: bool,
    /// Most rows answered.
    pub limit: usize,
}

impl Lookup<'_> {
    /// True when `row` answers this look-up.
    pub(super) fn matches(&self, row: &PredictionRow) -> bool {
        Some(row.prediction_id) == self.prediction_id
            || (row.request_id == self.request_id
                && (self.client_chosen || !row.request_id_from_client))
    }
}

/// The rows read back by [`super::PredictionLog::find`], oldest first;
/// empty when there are none (or no table yet).
pub(super) async fn select(
    pool: &Pool,
    lookup: Lookup<'_>,
) -> Result<Vec<StoredPrediction>, StoreError> {
    let client = pool.get().await?;
    let query = format!("SELECT {COLUMNS} FROM predictions {SELECT}");
    let limit = i64::try_from(lookup.limit).unwrap_or(i64::MAX);
    let rows = match client.prepare_cached(&query).await {
        Ok(statement) => {
            client
                .query(
                    &statement,
                    &[
                        &lookup.prediction_id,
                        &lookup.request_id,
                        &lookup.client_chosen,
                        &limit,
                    ],
                )
                .await
        }
        Err(e) => Err(e),
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(Vec::new()),
        Err(e) => {
            discard_if_broken(client, &e);
            return Err(e.into());
        }
    };
    rows.iter().map(stored).collect()
}

fn stored(row: &tokio_postgres::Row) -> Result<StoredPrediction, StoreError> {
    let batch_size: Option<i32> = row.try_get("batch_size")?;
    let replica: Option<i32> = row.try_get("replica")?;
    let http_status: i32 = row.try_get("http_status")?;
    Ok(StoredPrediction {
        prediction_id: row.try_get("prediction_id")?,
        request_id: row.try_get("request_id")?,
        request_id_from_client: row.try_get("request_id_from_client")?,
        model: row.try_get("model")?,
        model_version: row.try_get("model_version")?,
        input_sha256: row.try_get("input_sha256")?,
        status: row.try_get("status")?,
        http_status: u16::try_from(http_status).unwrap_or(0),
        error: row.try_get("error")?,
        queue_ms: row.try_get("queue_ms")?,
        inference_ms: row.try_get("inference_ms")?,
        total_ms: row.try_get("total_ms")?,
        batch_size: batch_size.and_then(|v| u32::try_from(v).ok()),
        replica: replica.and_then(|v| u32::try_from(v).ok()),
        cache_level: row.try_get("cache_level")?,
        created_at: row.try_get("created_at")?,
    })
}

fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// PostgreSQL refused the data itself (class 22, data exception, or 23,
/// integrity constraint): retrying the same rows cannot help.
fn is_data_error(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| code.code().starts_with("22") || code.code().starts_with("23"))
}

fn reject(row: &PredictionRow, error: &tokio_postgres::Error) {
    tracing::error!(
        prediction_id = %row.prediction_id,
        request_id = %row.request_id,
        model = %row.model,
        %error,
        "prediction log: PostgreSQL refused a row; dropped"
    );
}

/// Drops a connection that failed for a reason other than a clean error
/// from the server (the connection may be half-way through a query).
fn give_up(client: Client, error: WriteError) -> WriteError {
    match &error {
        WriteError::Db(e) => discard_if_broken(client, e),
        _ => discard(client),
    }
    error
}

fn discard_if_broken(client: Client, error: &tokio_postgres::Error) {
    if error.as_db_error().is_none() {
        discard(client);
    }
}

/// Takes the connection out of the pool and closes it.
fn discard(client: Client) {
    drop(Object::take(client));
}
