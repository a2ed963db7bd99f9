//! The inference service: the one door into Gantry under HTTP (`crate::api`)
//! and gRPC (`crate::grpc`). Both edges decode their protocol, call one
//! method here and encode what it answers; nothing here knows either
//! protocol. It owns the handle to the actor system ([`Serving`]), the
//! result cache, the prediction log, the shared memory regions, the media
//! pool, the admin check and the shutdown state:
//!
//! - predictions: [`InferenceService::open`] a request's record, then
//!   [`InferenceService::predict`] (tensors, [`predict`]) or
//!   [`InferenceService::file_predictor`] (uploads, [`uploads`]); the edge
//!   finishes the record with the status it sent ([`outcome`]);
//! - models: lookup, metadata, readiness, the repository index, Triton's
//!   configuration and statistics ([`models`]); load, unload, scale and
//!   reload ([`control`]);
//! - operations: the supervisor's snapshot, the prediction log's records,
//!   the admin check ([`admin`]), shutdown ([`shutdown`]).

pub mod admin;
mod control;
pub mod models;
mod outcome;
pub mod predict;
pub mod sequences;
pub mod shared_tensors;
pub mod shutdown;
pub mod uploads;

use std::sync::Arc;
use std::time::Duration;

use gantry_actors::repository::LoadError;
use gantry_actors::supervisor::{GetSnapshot, ServerSnapshot};
pub use gantry_actors::tensor::Outputs;
use gantry_actors::{InferError, ModelHandle, Serving};

pub use self::outcome::Pending;
pub use self::predict::{PredictCall, Prediction};
use self::sequences::Sequences;
use self::shutdown::Shutdown;
use self::uploads::{FilePredictor, MediaSettings};
use crate::cache::{CacheStats, ResultCache};
use crate::error::ApiError;
use crate::media::pool::MediaPool;
use crate::metrics::Metrics;
use crate::request_id::Requested;
use crate::store::{Lookup, PredictionLog, StoreError, StoreStats, StoredPrediction};
use crate::triton::shared_memory::SharedMemoryRegistry;

/// What the service is made of, built once at start.
pub struct ServiceParts {
    /// The actor system's handle.
    pub serving: Serving,
    pub metrics: Arc<Metrics>,
    pub cache: Option<Arc<ResultCache>>,
    pub log: Option<Arc<PredictionLog>>,
    /// `server.request_timeout_ms`.
    pub default_timeout: Duration,
    /// `server.admin_token`; `None`: loopback callers only.
    pub admin_token: Option<String>,
    pub media: MediaSettings,
    /// `server.drain_delay_s` and `server.shutdown_timeout_s`.
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
}

/// Shared by every HTTP worker and the gRPC server.
pub struct InferenceService {
    serving: Serving,
    metrics: Arc<Metrics>,
    default_timeout: Duration,
    cache: Option<Arc<ResultCache>>,
    log: Option<Arc<PredictionLog>>,
    /// Open sequences of sequence models.
    sequences: Sequences,
    admin_token: Option<String>,
    media: MediaSettings,
    /// Triton's system shared memory regions, registered by clients.
    shared_memory: SharedMemoryRegistry,
    shutdown: Shutdown,
}

impl InferenceService {
    pub fn new(parts: ServiceParts) -> InferenceService {
        let readiness = parts.serving.readiness.clone();
        InferenceService {
            serving: parts.serving,
            metrics: parts.metrics,
            default_timeout: parts.default_timeout,
            cache: parts.cache,
            log: parts.log,
            sequences: Sequences::default(),
            admin_token: parts.admin_token,
            media: parts.media,
            shared_memory: SharedMemoryRegistry::default(),
            shutdown: Shutdown::new(parts.drain_delay, parts.shutdown_timeout, readiness),
        }
    }

    /// Opens the record of a request that has just arrived.
    pub fn open(&self, request: &Requested) -> Pending {
        Pending::open(self.metrics.clone(), self.log.clone(), request.clone())
    }

    /// Runs predictions on uploaded files for this server.
    pub fn file_predictor(&self) -> FilePredictor<'_> {
        FilePredictor {
            service: self,
            pool: &self.media.pool,
            limits: self.media.image_limits,
        }
    }

    /// Where uploaded files are decoded and answers shaped.
    pub fn media_pool(&self) -> &MediaPool {
        &self.media.pool
    }

    /// Most files in one batch upload (`media.max_batch_files`).
    pub fn max_batch_files(&self) -> usize {
        self.media.max_batch_files
    }

    /// Lets `caller` through when it may use admin operations.
    pub fn authorize(&self, caller: &admin::Caller) -> Result<(), ApiError> {
        admin::check_admin(self.admin_token.as_deref(), caller)
    }

    /// The shared memory regions clients registered.
    pub fn shared_memory(&self) -> &SharedMemoryRegistry {
        &self.shared_memory
    }

    /// Where shutdown stands, and the count of admitted requests.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// True once new requests are refused.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_refusing()
    }

    /// True from the signal on: readiness answers 503, whether or not new
    /// requests are still served.
    pub fn is_draining(&self) -> bool {
        self.shutdown.is_draining()
    }

    /// The request counters and latency windows (stats, metrics).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The result cache's counters, when a cache is configured.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// The prediction log's pool and counters, when a database is set.
    pub fn store_stats(&self) -> Option<StoreStats> {
        self.log.as_ref().map(|l| l.stats())
    }

    /// Redis, the cache's shared level: `up`, `down` or `disabled`.
    pub fn redis_status(&self) -> &'static str {
        self.cache
            .as_ref()
            .and_then(|c| c.redis_status())
            .unwrap_or("disabled")
    }

    /// PostgreSQL, the prediction log's store: `up`, `down` or `disabled`.
    pub fn postgres_status(&self) -> &'static str {
        self.log.as_ref().map_or("disabled", |l| l.stats().status)
    }

    /// Repository folders that could not be served, and why.
    pub fn failed_models(&self) -> Vec<LoadError> {
        self.serving
            .load_errors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records of the prediction log; `Unavailable` without a database.
    pub async fn find_predictions(
        &self,
        lookup: Lookup<'_>,
    ) -> Result<Vec<StoredPrediction>, ApiError> {
        let Some(log) = &self.log else {
            return Err(ApiError::NotFound(
                "no prediction log is configured (store.database_url or DATABASE_URL)".into(),
            ));
        };
        log.find(lookup).await.map_err(|e: StoreError| {
            ApiError::Unavailable(format!("the prediction log is unreachable: {e}"))
        })
    }

    /// The supervisor's snapshot of every model, the budget and load
    /// errors (what stats and metrics report).
    pub async fn snapshot(&self) -> Result<ServerSnapshot, ApiError> {
        self.serving
            .supervisor
            .send(GetSnapshot)
            .await
            .map_err(|e| ApiError::Internal(supervisor_gone(&e)))?
            .map_err(ApiError::Internal)
    }

    /// The model called `name`, or `UnknownModel`.
    pub fn model(&self, name: &str) -> Result<Arc<ModelHandle>, InferError> {
        self.serving
            .model(name)
            .ok_or_else(|| InferError::UnknownModel(name.to_string()))
    }

    /// Every served model.
    pub fn models(&self) -> Vec<Arc<ModelHandle>> {
        self.serving.models()
    }

    /// Woken whenever [`InferenceService::is_ready`] may have changed.
    pub fn readiness_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.serving.readiness.subscribe()
    }

    /// True when every served model can take requests (resident, or out
    /// of memory and able to load) and no shutdown has begun
    /// (`/v2/health/ready`, gRPC health).
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.serving.models().iter().all(|m| m.is_servable())
    }

    /// How long a request that sets no timeout may take.
    pub fn default_timeout(&self) -> Duration {
        self.default_timeout
    }
}

/// The one message for a supervisor that did not answer (it has stopped).
fn supervisor_gone(e: &actix::MailboxError) -> String {
    format!("the supervisor did not answer: {e}")
}
