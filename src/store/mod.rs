//! The durable prediction log: one row per prediction request in
//! PostgreSQL's `predictions` table, keyed by an id the server makes for each
//! prediction, so clients reusing a request id never share a row.
//!
//! The request path only calls [`PredictionLog::record`], which pushes the row
//! into a bounded in-memory buffer and never waits. A background writer task
//! applies the migrations when it first connects, then writes the buffer in
//! batches (one `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO NOTHING`
//! per batch, so a retried batch is harmless) every `flush_ms`, or as soon as
//! `batch_rows` rows wait. Rows leave the buffer only once written; while
//! PostgreSQL is down they stay, the log reports `"down"` and the writer
//! retries with a backoff, and past `buffer_rows` new rows are dropped and
//! counted.

pub mod migrations;
mod record;
pub(crate) use record::civil_from_days;
mod writer;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, Timeouts,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

pub use record::{rfc3339, PredictionRow, StoredPrediction};
pub use writer::Lookup;

/// How long connecting to PostgreSQL may take, unless the URL sets
/// `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long unacknowledged data may sit on a connection before the kernel
/// drops it (Linux), unless the URL sets `tcp_user_timeout`.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a look-up may take, connecting included.
const GET_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the prediction log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/database`, or libpq's key=value
    /// form.
    pub database_url: String,
    /// Buffered rows are written at least this often, in milliseconds.
    pub flush_ms: u64,
    /// ... or as soon as this many rows are buffered; also the most rows one
    /// INSERT writes.
    pub batch_rows: usize,
    /// Most rows held while PostgreSQL is down; beyond, new rows are dropped
    /// and counted.
    pub buffer_rows: usize,
    /// Most connections to PostgreSQL.
    pub pool_size: usize,
    /// PEM bundle of the CAs that sign PostgreSQL's certificate, used when
    /// the URL names no `sslrootcert`; empty means none (see
    /// [`crate::tls::postgres`] for what each `sslmode` checks).
    pub ca_file: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            database_url: String::new(),
            flush_ms: 200,
            batch_rows: 500,
            buffer_rows: 100_000,
            pool_size: 4,
            ca_file: PathBuf::new(),
        }
    }
}

impl StoreConfig {
    /// The defaults, with `database_url`.
    pub fn new(database_url: impl Into<String>) -> Self {
        StoreConfig {
            database_url: database_url.into(),
            ..StoreConfig::default()
        }
    }
}

/// What the prediction log can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `database_url` does not parse (the message never repeats the URL,
    /// which may hold a password).
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// [`PredictionLog::start`] was called outside a tokio runtime.
    #[error("the prediction log must be started inside a tokio runtime")]
    NoRuntime,
    /// A TLS setting (`sslrootcert`, `sslcert`, `sslkey`, `store.ca_file`)
    /// cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The connection pool could not be built.
    #[error("cannot build the PostgreSQL pool: {0}")]
    Pool(String),
    /// No connection to PostgreSQL could be had.
    #[error("PostgreSQL is unreachable: {}", crate::tls::with_causes(.0))]
    Unavailable(#[from] PoolError),
    /// A query failed.
    #[error("PostgreSQL query failed: {}", crate::tls::with_causes(.0))]
    Query(#[from] tokio_postgres::Error),
    /// A query did not answer in time.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
}

/// Numbers for `/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// `"up"` once the last write (or probe) succeeded, `"down"` before the
    /// first success and after a failure.
    pub status: &'static str,
    /// Connections open.
    pub size: usize,
    /// Connections open and idle.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// Rows PostgreSQL reported stored since start.
    pub rows_written: u64,
    /// Rows found stored already when written (a batch written again after
    /// PostgreSQL committed it but the acknowledgement was lost); neither
    /// written twice nor lost.
    pub rows_already_stored: u64,
    /// Rows refused because the buffer was full, or rejected by PostgreSQL
    /// as malformed.
    pub rows_dropped: u64,
    /// Rows buffered, not yet written.
    pub buffer_depth: usize,
}

const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// State shared by the handle and its writer task.
struct Shared {
    pool: Pool,
    flush_every: Duration,
    batch_rows: usize,
    buffer_rows: usize,
    /// Rows not yet written, oldest first. Only the writer removes rows,
    /// and only from the front, after they are written.
    buffer: Mutex<VecDeque<PredictionRow>>,
    /// `buffer.len()`, readable without the lock.
    depth: AtomicUsize,
    state: AtomicU8,
    rows_written: AtomicU64,
    rows_already_stored: AtomicU64,
    rows_dropped: AtomicU64,
    /// Set while rows are being dropped, so that only the first drop logs.
    dropping: AtomicBool,
    /// A full batch waits.
    batch_ready: Notify,
    /// [`PredictionLog::flush`] wants everything written now (cuts backoff).
    flush_now: Notify,
    /// The handle is gone: the writer stops.
    closed: AtomicBool,
    shutdown: Notify,
}

impl Shared {
    fn buffer(&self) -> MutexGuard<'_, VecDeque<PredictionRow>> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies of the oldest `n` buffered rows.
    fn peek(&self, n: usize) -> Vec<PredictionRow> {
        self.buffer().iter().take(n).cloned().collect()
    }

    /// Removes the oldest `n` rows, once written (or rejected).
    fn consume(&self, n: usize) {
        let mut buffer = self.buffer();
        let n = n.min(buffer.len());
        buffer.drain(..n);
        self.depth.store(buffer.len(), Ordering::Relaxed);
    }

    fn mark_up(&self) {
        if self.state.swap(UP, Ordering::Relaxed) == DOWN {
            tracing::info!("prediction log: PostgreSQL is reachable again");
        }
    }

    fn mark_down(&self, error: &dyn std::fmt::Display) {
        if self.state.swap(DOWN, Ordering::Relaxed) == DOWN {
            tracing::debug!(%error, "prediction log: PostgreSQL still unreachable");
        } else {
            tracing::warn!(
                %error,
                buffered = self.depth.load(Ordering::Relaxed),
                "prediction log: PostgreSQL is unreachable; buffering rows"
            );
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// The prediction log's handle. Dropping the last one stops the writer;
/// call [`PredictionLog::flush`] first to keep what is buffered.
pub struct PredictionLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PredictionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionLog")
            .field("stats", &self.stats())
            .finish()
    }
}

impl PredictionLog {
    /// Builds the pool and starts the background writer on the current
    /// tokio runtime. Never fails because PostgreSQL is down (the writer
    /// connects, migrates and writes when it can); fails only for an
    /// unusable URL or outside a runtime.
    pub fn start(config: StoreConfig) -> Result<Arc<PredictionLog>, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StoreError::NoRuntime)?;
        let pool = build_pool(&config)?;
        let shared = Arc::new(Shared {
            pool,
            flush_every: Duration::from_millis(config.flush_ms.max(1)),
            batch_rows: config.batch_rows.max(1),
            buffer_rows: config.buffer_rows,
            buffer: Mutex::new(VecDeque::new()),
            depth: AtomicUsize::new(0),
            state: AtomicU8::new(STARTING),
            rows_written: AtomicU64::new(0),
            rows_already_stored: AtomicU64::new(0),
            rows_dropped: AtomicU64::new(0),
            dropping: AtomicBool::new(false),
            batch_ready: Notify::new(),
            flush_now: Notify::new(),
            closed: AtomicBool::new(false),
            shutdown: Notify::new(),
        });
        runtime.spawn(writer::run(shared.clone()));
        Ok(Arc::new(PredictionLog { shared }))
    }

    /// Queues `row` for writing, or counts it as dropped when the buffer
    /// holds `buffer_rows` rows. Never waits and never fails.
    pub fn record(&self, mut row: PredictionRow) {
        let shared = &self.shared;
        row.normalize();
        let depth = {
            let mut buffer = shared.buffer();
            if buffer.len() >= shared.buffer_rows {
                drop(buffer);
                shared.rows_dropped.fetch_add(1, Ordering::Relaxed);
                if !shared.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        buffer_rows = shared.buffer_rows,
                        "prediction log buffer is full; dropping new rows"
                    );
                }
                return;
            }
            buffer.push_back(row);
            shared.depth.store(buffer.len(), Ordering::Relaxed);
            buffer.len()
        };
        if depth >= shared.batch_rows {
            shared.batch_ready.notify_one();
        }
    }

    /// The prediction whose key is `prediction_id`: from the buffer when it
    /// is not written yet, else from the table. `Ok(None)` when there is no
    /// such row; an error only when the row is not buffered and PostgreSQL
    /// cannot answer.
    pub async fn get(&self, prediction_id: Uuid) -> Result<Option<StoredPrediction>, StoreError> {
        let found = self
            .find(Lookup {
                prediction_id: Some(prediction_id),
                request_id: "",
                client_chosen: false,
                limit: 1,
            })
            .await?;
        Ok(found
            .into_iter()
            .find(|row| row.prediction_id == prediction_id))
    }

    /// The predictions `lookup` names (at most `lookup.limit`), oldest
    /// first: buffered ones and written ones. An error only when PostgreSQL
    /// cannot answer.
    pub async fn find(&self, lookup: Lookup<'_>) -> Result<Vec<StoredPrediction>, StoreError> {
        // Rows leave the buffer only after they are committed, so every row
        // is buffered, in the table, or both (for a moment): read both and
        // keep one of each key.
        let buffered: Vec<StoredPrediction> = self
            .shared
            .buffer()
            .iter()
            .filter(|row| lookup.matches(row))
            .take(lookup.limit)
            .cloned()
            .map(StoredPrediction::from)
            .collect();
        if buffered.len() == 1 && lookup.limit == 1 {
            return Ok(buffered);
        }
        let written = tokio::time::timeout(GET_TIMEOUT, writer::select(&self.shared.pool, lookup))
            .await
            .map_err(|_| StoreError::Timeout(GET_TIMEOUT));
        let written = match written {
            Ok(Ok(rows)) => rows,
            // What the buffer holds is answer enough while PostgreSQL is down.
            Err(_) | Ok(Err(_)) if !buffered.is_empty() => Vec::new(),
            Ok(Err(e)) | Err(e) => return Err(e),
        };
        let mut all = written;
        for row in buffered {
            if !all.iter().any(|r| r.prediction_id == row.prediction_id) {
                all.push(row);
            }
        }
        all.sort_by_key(|row| (row.created_at, row.prediction_id));
        all.truncate(lookup.limit);
        Ok(all)
    }

    /// Cheap numbers for `/stats`: atomics and the pool's status.
    pub fn stats(&self) -> StoreStats {
        let shared = &self.shared;
        let pool = shared.pool.status();
        StoreStats {
            status: if shared.state.load(Ordering::Relaxed) == UP {
                "up"
            } else {
                "down"
            },
            size: pool.size,
            available: pool.available,
            waiting: pool.waiting,
            rows_written: shared.rows_written.load(Ordering::Relaxed),
            rows_already_stored: shared.rows_already_stored.load(Ordering::Relaxed),
            rows_dropped: shared.rows_dropped.load(Ordering::Relaxed),
            buffer_depth: shared.depth.load(Ordering::Relaxed),
        }
    }

    /// Asks the writer to write everything buffered now, and waits until
    /// the buffer is empty or `timeout` has passed (shutdown). Rows still
    /// buffered then are logged and lost when the log is dropped.
    pub async fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let depth = self.shared.depth.load(Ordering::Relaxed);
            if depth == 0 {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    rows = depth,
                    "prediction log: rows still unwritten after the flush timeout"
                );
                return;
            }
            self.shared.flush_now.notify_one();
            tokio::time::sleep((deadline - now).min(Duration::from_millis(10))).await;
        }
    }
}

impl Drop for PredictionLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.shutdown.notify_one();
    }
}

/// The pool: `database_url` (with its `sslmode`) with short connect and TCP timeouts, fast
/// recycling (a closed connection is replaced on the next checkout), and
/// bounded waits so a dead server never stalls a caller for long.
fn build_pool(config: &StoreConfig) -> Result<Pool, StoreError> {
    let ca_file = Some(config.ca_file.as_path()).filter(|p| !p.as_os_str().is_empty());
    let target =
        crate::tls::postgres::target(&config.database_url, ca_file).map_err(|e| match e {
            crate::tls::postgres::PgTlsError::Url(why) => StoreError::InvalidUrl(why),
            crate::tls::postgres::PgTlsError::Tls(e) => StoreError::Tls(e),
        })?;
    let mut pg = target.config;
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        return Err(StoreError::InvalidUrl("it names no host".into()));
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("gantry");
    }
    let manager = Manager::from_config(
        pg,
        target.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .timeouts(Timeouts {
            wait: Some(GET_TIMEOUT),
            create: Some(CONNECT_TIMEOUT + Duration::from_secs(1)),
            recycle: Some(Duration::from_secs(1)),
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))
}
