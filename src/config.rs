//! Server configuration, layered: embedded defaults, then the TOML file, then
//! `GANTRY__SECTION__KEY` environment variables, then command-line flags.
//! Every key is checked on load; errors name the key and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The whole configuration. `config/gantry.toml` documents every key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub models: ModelsConfig,
    pub memory: MemoryConfig,
    pub runtime: RuntimeConfig,
    pub cache: CacheConfig,
    /// The prediction log; `database_url` empty means `DATABASE_URL`.
    pub store: crate::store::StoreConfig,
    pub media: MediaConfig,
    pub log: LogConfig,
    /// Traces over OTLP.
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// Uploaded images and audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Decode and post-processing jobs running at once; 0 means the cores.
    pub threads: usize,
    /// Most pixels an uploaded image may declare; larger ones are refused
    /// before they are decoded.
    pub max_image_pixels: u64,
    /// Most files in one `predict/batch` request.
    pub max_batch_files: usize,
    /// Files that may wait for a decode thread; beyond, 429.
    pub queue_capacity: usize,
    /// Most pixels along either side of an uploaded image.
    pub max_image_side: u32,
    /// Most times longer one side of an uploaded image may be than the other.
    pub max_aspect_ratio: u32,
    /// Most memory one file's job may be estimated to take (decode, resize,
    /// answer), in MiB; larger files are refused (422) before decoding.
    pub max_file_memory_mb: u64,
    /// Most memory all media jobs running or waiting may hold together, in
    /// MiB; a file that does not fit beside them is refused at once (429).
    pub max_inflight_mb: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            threads: 0,
            max_image_pixels: 40_000_000,
            max_batch_files: 64,
            queue_capacity: 256,
            max_image_side: 65_535,
            max_aspect_ratio: 100,
            max_file_memory_mb: 1024,
            max_inflight_mb: 2048,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: String,
    /// Address of the gRPC server (KServe v2 / Triton); empty turns it off.
    pub grpc_bind: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest request body accepted, in MiB.
    pub body_limit_mb: u64,
    /// Deadline of a request that names none, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests, in seconds.
    pub shutdown_timeout_s: u64,
    /// On SIGTERM, seconds during which readiness is already 503 but
    /// predictions are still served, so load balancers stop routing here
    /// before new requests are refused.
    pub drain_delay_s: u64,
    /// Bearer token of the admin routes (scaling, reload, model load and
    /// unload); empty means they answer loopback clients only, and only
    /// requests that came through no proxy.
    pub admin_token: String,
    /// Time a connection's first request head may take to arrive, in ms;
    /// past it actix answers 408 and closes the connection.
    pub header_timeout_ms: u64,
    /// Time a whole request body may take to arrive, in ms; past it the
    /// answer is 408 and the connection is closed.
    pub body_timeout_ms: u64,
    /// How long an idle keep-alive connection waits for its next request, in
    /// seconds; 0 turns keep-alive off.
    pub keep_alive_s: u64,
    /// Time a closing connection gets to shut down cleanly, in ms.
    pub disconnect_timeout_ms: u64,
    /// Open connections the server holds at most (all workers together);
    /// beyond, new connections wait in the listen backlog.
    pub max_connections: usize,
    /// Connections the kernel queues before the server accepts them.
    pub backlog: u32,
    /// Each connection's receive buffer (SO_RCVBUF) in KiB, for the HTTP
    /// and gRPC listeners; 0 leaves it to the OS's autotuning.
    pub receive_buffer_kb: u32,
    /// gzip gRPC answers to clients whose `grpc-accept-encoding` lists it.
    /// Off by default, as in Triton and gRPC's own servers: gRPC clients
    /// list every encoding they can read on every call, which is no request
    /// to compress, and tensors barely shrink for the CPU it costs.
    pub grpc_compress_answers: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:8080".into(),
            grpc_bind: "127.0.0.1:8001".into(),
            workers: 0,
            body_limit_mb: 64,
            request_timeout_ms: 30_000,
            shutdown_timeout_s: 30,
            drain_delay_s: 0,
            admin_token: String::new(),
            header_timeout_ms: 5_000,
            body_timeout_ms: 60_000,
            keep_alive_s: 5,
            disconnect_timeout_ms: 1_000,
            max_connections: 10_000,
            backlog: 1_024,
            receive_buffer_kb: 1_024,
            grpc_compress_answers: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// The model repository: one folder per model.
    pub dir: PathBuf,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            dir: PathBuf::from("models"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Memory budget for replicas when no GPU is found, in MiB; 0 means 75%
    /// of system RAM.
    pub limit_mb: u64,
    /// Share of GPU memory the budget may use when NVML finds a GPU.
    pub gpu_fraction: f64,
    /// Milliseconds a replica stays ready at least before it may be evicted for
    /// another model or scaled down when idle.
    pub min_residency_ms: u64,
    /// A replica may be evicted for another model once ready for this many
    /// times its own load time, if that is shorter than `min_residency_ms`
    /// (0: `min_residency_ms` alone).
    pub min_residency_loads: u32,
    /// Replicas of models out of memory map their weights from a split copy
    /// of the model file (loads in milliseconds, no transient memory).
    pub map_weights: bool,
    /// Where those copies go; empty: `gantry-weights-<uid>` in the system's
    /// temporary directory. Must be on a disk, not in RAM (tmpfs).
    pub weights_dir: String,
    /// Seconds a replica that maps its weights serves before a packed one
    /// replaces it, when its model's batches held two items or more on
    /// average over that span and the budget has room; 0: never.
    pub repack_after_s: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            limit_mb: 0,
            gpu_fraction: 0.9,
            min_residency_ms: 10_000,
            min_residency_loads: 3,
            map_weights: true,
            weights_dir: String::new(),
            repack_after_s: 10,
        }
    }
}

impl MemoryConfig {
    /// The directory for split copies; `None` when weights are not mapped.
    pub fn weights_dir(&self) -> Option<PathBuf> {
        if !self.map_weights {
            return None;
        }
        if !self.weights_dir.is_empty() {
            return Some(PathBuf::from(&self.weights_dir));
        }
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        Some(std::env::temp_dir().join(format!("gantry-weights-{uid}")))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so`; empty means `ORT_DYLIB_PATH`, then the
    /// `.onnxruntime/` folder that `make onnxruntime` fills.
    pub onnxruntime_lib: String,
    /// Threads of ONNX Runtime's one intra-op pool, which every session
    /// shares (models with `intra_op_threads` have their own); 0 means the
    /// cores available to the process.
    pub intra_op_threads: usize,
    /// Whether the pool's idle threads spin briefly before they sleep.
    pub spinning: bool,
    /// CPU runs on the shared pool predicted (from the session's last time
    /// per item) to take at least this many ms take the pool one at a
    /// time; shorter runs never wait. 0 turns it off.
    pub exclusive_run_ms: f64,
    /// Nice value (0-19) of the threads that run models, so that those
    /// serving requests go first on shared cores; 0: the process's.
    pub compute_nice: i32,
    /// Requests predicted to run within this many microseconds run on the
    /// thread that received them while a replica is idle and nothing
    /// waits (see `gantry_actors::inline_run`); 0 turns it off.
    pub inline_run_us: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let threads = gantry_actors::engine::onnx::RuntimeThreads::default();
        RuntimeConfig {
            onnxruntime_lib: String::new(),
            intra_op_threads: threads.intra_op,
            spinning: threads.spinning,
            exclusive_run_ms: threads.exclusive_run.as_secs_f64() * 1000.0,
            compute_nice: threads.compute_nice,
            inline_run_us: gantry_actors::inline_run::DEFAULT_THRESHOLD_US,
        }
    }
}

impl RuntimeConfig {
    /// The shared thread pool ONNX Runtime starts with.
    pub fn threads(&self) -> gantry_actors::engine::onnx::RuntimeThreads {
        gantry_actors::engine::onnx::RuntimeThreads {
            intra_op: self.intra_op_threads,
            spinning: self.spinning,
            exclusive_run: Duration::from_secs_f64(self.exclusive_run_ms.max(0.0) / 1000.0),
            compute_nice: self.compute_nice,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cache successful results at all.
    pub enabled: bool,
    /// In-process cache size, in MiB of output data.
    pub l1_capacity_mb: u64,
    /// How long a result stays cached, in seconds (both levels).
    pub ttl_s: u64,
    /// Shared Redis cache; empty means `REDIS_URL`, and without it no L2.
    pub redis_url: String,
    /// Longest a Redis call may take before it counts as a miss, in ms.
    pub redis_timeout_ms: u64,
    /// PEM bundle of the CAs to trust for a `rediss://` URL instead of the
    /// public roots; empty means the public roots.
    pub redis_ca_file: PathBuf,
    /// PEM client certificate for Redis servers that require one (mutual
    /// TLS); empty means none. Needs `redis_key_file`.
    pub redis_cert_file: PathBuf,
    /// PEM private key of `redis_cert_file`.
    pub redis_key_file: PathBuf,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            l1_capacity_mb: 256,
            ttl_s: 300,
            redis_url: String::new(),
            redis_timeout_ms: 5,
            redis_ca_file: PathBuf::new(),
            redis_cert_file: PathBuf::new(),
            redis_key_file: PathBuf::new(),
        }
    }
}

/// `None` for an empty path (a key left at its default).
fn non_empty(path: &Path) -> Option<PathBuf> {
    (!path.as_os_str().is_empty()).then(|| path.to_path_buf())
}

/// A URL from config, else from the environment variable, else none.
fn url_or_env(configured: &str, variable: &str) -> Option<String> {
    Some(configured.to_string())
        .filter(|u| !u.is_empty())
        .or_else(|| std::env::var(variable).ok().filter(|u| !u.is_empty()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Filter used when `RUST_LOG` is not set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info,ort=warn".into(),
        }
    }
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub models_dir: Option<PathBuf>,
    pub bind: Option<String>,
    pub grpc_bind: Option<String>,
    pub log_format: Option<LogFormat>,
}

/// Where a key's value came from, for error messages: the file's path, the
/// exact environment variable, or the embedded defaults.
fn describe_source(key: &str, metadata: Option<&figment::Metadata>) -> String {
    match metadata {
        Some(m) if m.name.contains("environment") => {
            format!(
                "environment variable GANTRY__{}",
                key.to_uppercase().replace('.', "__")
            )
        }
        Some(m) => match &m.source {
            Some(source) => source.to_string(),
            None => m.name.to_string(),
        },
        None => "defaults".into(),
    }
}

/// A configuration error, naming the key and its source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads the layers. `file` is read when given; `required` makes a
    /// missing file an error (an explicit `--config`).
    pub fn load(file: &Path, required: bool, overrides: &Overrides) -> Result<Config, ConfigError> {
        if required && !file.is_file() {
            return Err(ConfigError(format!(
                "config file {} not found",
                file.display()
            )));
        }
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        // The default file, when it is not there, leaves the embedded defaults.
        if file.is_file() {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("GANTRY__").split("__"));
        if let Some(dir) = &overrides.models_dir {
            figment = figment.merge(Serialized::default("models.dir", dir));
        }
        if let Some(bind) = &overrides.bind {
            figment = figment.merge(Serialized::default("server.bind", bind));
        }
        if let Some(bind) = &overrides.grpc_bind {
            figment = figment.merge(Serialized::default("server.grpc_bind", bind));
        }
        if let Some(format) = overrides.log_format {
            figment = figment.merge(Serialized::default("log.format", format));
        }
        let config: Config = figment.extract().map_err(|errors| {
            let described: Vec<String> = errors
                .into_iter()
                .map(|e| {
                    let key = e.path.join(".");
                    let source = describe_source(&key, e.metadata.as_ref());
                    if key.is_empty() {
                        format!("{} (from {source})", e.kind)
                    } else {
                        format!("key `{key}` (from {source}): {}", e.kind)
                    }
                })
                .collect();
            ConfigError(described.join("; "))
        })?;
        config.check().map_err(|(key, why)| {
            let source = describe_source(key, figment.find_metadata(key));
            ConfigError(format!("key `{key}` (from {source}): {why}"))
        })?;
        Ok(config)
    }

    /// Checks values that parse but make no sense; returns the key and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.server.bind.parse::<SocketAddr>().is_err() {
            return Err((
                "server.bind",
                format!("'{}' is not an IP:port address", self.server.bind),
            ));
        }
        if !self.server.grpc_bind.is_empty() && self.server.grpc_bind.parse::<SocketAddr>().is_err()
        {
            return Err((
                "server.grpc_bind",
                format!(
                    "'{}' is not an IP:port address (empty turns gRPC off)",
                    self.server.grpc_bind
                ),
            ));
        }
        if self.server.workers > 1024 {
            return Err(("server.workers", "must be at most 1024".into()));
        }
        if self.server.body_limit_mb == 0 || self.server.body_limit_mb > 4096 {
            return Err(("server.body_limit_mb", "must be between 1 and 4096".into()));
        }
        if self.server.request_timeout_ms == 0 {
            return Err(("server.request_timeout_ms", "must be at least 1".into()));
        }
        if self.server.header_timeout_ms == 0 {
            return Err(("server.header_timeout_ms", "must be at least 1".into()));
        }
        if self.server.body_timeout_ms == 0 {
            return Err(("server.body_timeout_ms", "must be at least 1".into()));
        }
        if self.server.keep_alive_s > 3_600 {
            return Err(("server.keep_alive_s", "must be at most 3600".into()));
        }
        if self.server.disconnect_timeout_ms == 0 {
            return Err(("server.disconnect_timeout_ms", "must be at least 1".into()));
        }
        if self.server.max_connections == 0 {
            return Err(("server.max_connections", "must be at least 1".into()));
        }
        if self.server.backlog == 0 || self.server.backlog > 65_535 {
            return Err(("server.backlog", "must be between 1 and 65535".into()));
        }
        if self.server.receive_buffer_kb > 65_536 {
            return Err((
                "server.receive_buffer_kb",
                "must be at most 65536 (64 MiB); 0 leaves it to the OS".into(),
            ));
        }
        if !(1..=4_000_000_000).contains(&self.media.max_image_pixels) {
            return Err((
                "media.max_image_pixels",
                "must be between 1 and 4000000000".into(),
            ));
        }
        if self.media.max_image_side == 0 {
            return Err(("media.max_image_side", "must be at least 1".into()));
        }
        if self.media.max_aspect_ratio == 0 {
            return Err(("media.max_aspect_ratio", "must be at least 1".into()));
        }
        if self.media.max_file_memory_mb == 0 {
            return Err(("media.max_file_memory_mb", "must be at least 1".into()));
        }
        if self.media.max_inflight_mb < self.media.max_file_memory_mb {
            return Err((
                "media.max_inflight_mb",
                format!(
                    "must be at least media.max_file_memory_mb ({}), or no file at that bound could run",
                    self.media.max_file_memory_mb
                ),
            ));
        }
        if self.media.max_batch_files == 0 {
            return Err(("media.max_batch_files", "must be at least 1".into()));
        }
        if self.cache.redis_cert_file.as_os_str().is_empty()
            != self.cache.redis_key_file.as_os_str().is_empty()
        {
            return Err((
                "cache.redis_cert_file",
                "and cache.redis_key_file must be set together".into(),
            ));
        }
        if !(self.memory.gpu_fraction > 0.0 && self.memory.gpu_fraction <= 1.0) {
            return Err(("memory.gpu_fraction", "must be in (0, 1]".into()));
        }
        if self.memory.min_residency_ms > 3_600_000 {
            return Err(("memory.min_residency_ms", "must be at most 3600000".into()));
        }
        if self.memory.min_residency_loads > 10_000 {
            return Err(("memory.min_residency_loads", "must be at most 10000".into()));
        }
        if self.memory.repack_after_s > 86_400 {
            return Err(("memory.repack_after_s", "must be at most 86400".into()));
        }
        let run_ms = self.runtime.exclusive_run_ms;
        if !(0.0..=60_000.0).contains(&run_ms) {
            return Err((
                "runtime.exclusive_run_ms",
                "must be between 0 and 60000".into(),
            ));
        }
        if self.runtime.inline_run_us > 10_000 {
            return Err(("runtime.inline_run_us", "must be at most 10000".into()));
        }
        if !(0..=19).contains(&self.runtime.compute_nice) {
            return Err(("runtime.compute_nice", "must be between 0 and 19".into()));
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            return Err(("telemetry.sampling_ratio", "must be between 0 and 1".into()));
        }
        if self.telemetry.export_queue == 0 {
            return Err(("telemetry.export_queue", "must be at least 1".into()));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err((
                "log.level",
                format!("'{}' is not a log filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// The cache settings, or `None` when caching is off.
    pub fn cache_settings(&self) -> Option<crate::cache::CacheSettings> {
        self.cache.enabled.then(|| crate::cache::CacheSettings {
            l1_capacity_mb: self.cache.l1_capacity_mb,
            ttl: std::time::Duration::from_secs(self.cache.ttl_s),
            redis_url: url_or_env(&self.cache.redis_url, "REDIS_URL"),
            redis_timeout: std::time::Duration::from_millis(self.cache.redis_timeout_ms),
            redis_tls: crate::tls::redis::RedisTlsFiles {
                ca_file: non_empty(&self.cache.redis_ca_file),
                cert_file: non_empty(&self.cache.redis_cert_file),
                key_file: non_empty(&self.cache.redis_key_file),
            },
        })
    }

    /// The PostgreSQL URL of the prediction log, if any.
    pub fn database_url(&self) -> Option<String> {
        url_or_env(&self.store.database_url, "DATABASE_URL")
    }

    /// The memory budget settings for the actor system.
    pub fn memory_budget(&self) -> gantry_actors::memory::MemoryConfig {
        gantry_actors::memory::MemoryConfig {
            limit_mb: (self.memory.limit_mb > 0).then_some(self.memory.limit_mb),
            gpu_fraction: self.memory.gpu_fraction,
        }
    }

    /// How the supervisor decides what stays in memory.
    pub fn residency(&self) -> gantry_actors::arbiter::ResidencyConfig {
        gantry_actors::arbiter::ResidencyConfig {
            min_residency: std::time::Duration::from_millis(self.memory.min_residency_ms),
            min_residency_loads: self.memory.min_residency_loads,
            repack_after: (self.memory.repack_after_s > 0)
                .then(|| std::time::Duration::from_secs(self.memory.repack_after_s)),
        }
    }
}

#[cfg(test)]
mod tests;
