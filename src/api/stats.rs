//! `GET /api/optimized/stats`: replicas, batchers, the memory budget and
//! request performance, in one JSON document for SREs.

use std::collections::BTreeMap;

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use gantry_actors::batcher::ReplicaState;
use gantry_actors::supervisor::ModelSnapshot;
use serde::Serialize;

use super::{route, AppState};
use crate::cache::CacheStats;
use crate::error::ApiError;
use crate::metrics::window::{Percentiles, WindowSummary};
use crate::store::StoreStats;

pub fn config_stats_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(Method::GET, "/api/optimized/stats", stats));
}

#[derive(Serialize, utoipa::ToSchema)]
struct Stats {
    uptime_s: f64,
    model_pools: BTreeMap<String, Pool>,
    memory: Memory,
    residency: ResidencyStats,
    runtime: Runtime,
    performance_metrics: Performance,
    /// `null` when caching is off.
    #[schema(value_type = Option<Object>)]
    cache: Option<CacheStats>,
    connection_pools: ConnectionPools,
    failed_models: BTreeMap<String, String>,
}

/// ONNX Runtime's shared thread pool.
#[derive(Serialize, utoipa::ToSchema)]
struct Runtime {
    /// Threads of the intra-op pool every session shares (models with
    /// `intra_op_threads` have their own); `null` before ONNX Runtime
    /// starts or with another engine.
    intra_op_threads: Option<usize>,
    /// CPU runs predicted to take at least this long take the shared pool
    /// one at a time (`runtime.exclusive_run_ms`; 0: never).
    exclusive_run_ms: f64,
    /// Requests predicted to run within this many microseconds run on the
    /// worker that received them (`runtime.inline_run_us`; 0: never).
    inline_run_us: u64,
    pool_gate: PoolGate,
}

/// The shared pool's gate since start.
#[derive(Serialize, utoipa::ToSchema)]
struct PoolGate {
    /// Runs long enough to take it.
    gated_runs: u64,
    /// Of those, runs that waited for another run to finish.
    waited_runs: u64,
    /// Time those runs waited, in total.
    wait_ms_total: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RedisPool {
    status: &'static str,
}

/// Each is `null` when that dependency is not configured.
#[derive(Serialize, utoipa::ToSchema)]
struct ConnectionPools {
    redis: Option<RedisPool>,
    #[schema(value_type = Option<Object>)]
    postgres: Option<StoreStats>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Pool {
    version: String,
    ready: bool,
    /// `resident`, `cold` (out of memory; its next request loads it),
    /// `loading`, `starting` or `failed`.
    residency: &'static str,
    /// `keep_loaded`: never evicted.
    pinned: bool,
    /// Replicas it keeps when idle.
    min_replicas: usize,
    /// Replicas it may grow to under a backlog.
    max_replicas: usize,
    memory_mb_per_replica: u64,
    usage: Usage,
    replicas: Vec<Replica>,
    batcher: BatcherStats,
}

/// What the supervisor weighs when it picks replicas to evict.
#[derive(Serialize, utoipa::ToSchema)]
struct Usage {
    /// Requests since it last loaded.
    requests_since_load: u64,
    /// Requests, each counted half after 5 s: the frequency eviction
    /// weighs (about requests per second x 7.2 under steady traffic).
    demand: f64,
    /// How long a load and warmup takes (its last load that mapped its
    /// weights, once one has; else its last load); `null` before one.
    load_ms: Option<u64>,
    /// Seconds since its last request; `null` before the first.
    idle_s: Option<f64>,
}

/// What the supervisor decided about what is in memory.
#[derive(Serialize, utoipa::ToSchema)]
struct ResidencyStats {
    /// `memory.min_residency_ms`.
    min_residency_ms: u64,
    /// The latest decisions (at most 64), oldest first.
    decisions: Vec<Decision>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Decision {
    /// When, in ms since the Unix epoch.
    at_unix_ms: u64,
    model: String,
    /// `load`, `evict`, `scale_up`, `undo_scale_up`, `scale_down` or
    /// `repack`.
    action: &'static str,
    reason: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Replica {
    id: usize,
    state: &'static str,
    /// Where it runs: `cpu`, `gpu:0`, ...; `null` while refused.
    device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    inflight: usize,
    processed: u64,
    errors: u64,
    restarts: u64,
    /// MB its claim on the budget holds (0 while refused).
    reserved_mb: u64,
    /// MB its loaded engine was measured to hold; `null` before.
    measured_mb: Option<u64>,
    /// Its engine maps its weights from a split copy of the model file
    /// (a load on demand, `memory.map_weights`) rather than holding them
    /// packed in memory.
    weights_mapped: bool,
    /// Its run time in ms by batch size (median of the last runs; warmup's
    /// and every batch's): `{"1": 0.4, "16": 2.9}`.
    #[schema(value_type = BTreeMap<String, f64>)]
    run_ms: BTreeMap<usize, f64>,
}

/// A model's latency target and what it refused.
#[derive(Serialize, utoipa::ToSchema)]
struct LatencyStats {
    /// `latency_target_ms`.
    target_ms: u64,
    /// Refused 429 at arrival: predicted to finish past the target.
    refused_early: u64,
    /// Of those, refused where they arrived (the HTTP or gRPC worker) by
    /// the batcher's last prediction, without the hop to it.
    refused_at_door: u64,
    /// The last arrival's predicted time to answer (queue and run), ms.
    predicted_ms: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct BatcherStats {
    queue_depth: usize,
    batches: u64,
    items: u64,
    /// Of `batches`, the requests run on the HTTP or gRPC worker that
    /// received them (`runtime.inline_run_us`), each a batch of its own.
    inline_runs: u64,
    avg_batch_size: f64,
    /// The cap in force now, and what set it (`max_batch_size`, `unbatched`,
    /// `memory_budget`, `out_of_memory`, `latency_target`).
    max_batch_size: usize,
    cap_reason: &'static str,
    /// MB one item needs (configured or measured by warmup); `null` if unknown.
    memory_per_item_mb: Option<u64>,
    window_ms: u64,
    expired: u64,
    cancelled: u64,
    /// Refused 429 because the queue was full, or the batcher's mailbox
    /// before the batcher saw the request.
    rejected: u64,
    /// Batches run, by number of items: `{"1": 40, "8": 12}`.
    #[schema(value_type = BTreeMap<String, u64>)]
    batch_fill: BTreeMap<usize, u64>,
    /// With `latency_target_ms`: the target and what it refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency: Option<LatencyStats>,
}

/// The top-level figures are the CPU's budget; `devices` has each
/// device's, the CPU first.
#[derive(Serialize, utoipa::ToSchema)]
struct Memory {
    source: &'static str,
    total_mb: u64,
    reserved_mb: u64,
    free_mb: u64,
    devices: Vec<DeviceMemory>,
    refused: Vec<Refused>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeviceMemory {
    /// `cpu`, `gpu:0`, ...
    device: String,
    /// The GPU's name; absent for the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Where the total came from: `nvml`, `cgroup`, `config`, `system_ram`.
    source: &'static str,
    total_mb: u64,
    reserved_mb: u64,
    free_mb: u64,
    /// The CPU, with ONNX Runtime: MB the process's resident memory has
    /// grown by since the budget started (before any replica loaded), to
    /// read beside `reserved_mb`: the measured footprints should add up
    /// to about this, less the process's other memory. It counts mapped
    /// weights' pages and, on a GPU host, the host memory CUDA sessions
    /// take, which the CPU's reservations do not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    process_growth_mb: Option<u64>,
    /// GPUs only (NVML): memory in use on the GPU now, by any process.
    #[serde(skip_serializing_if = "Option::is_none")]
    used_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    utilization_percent: Option<u32>,
}

fn device_memory(d: &gantry_actors::memory::DeviceSnapshot) -> DeviceMemory {
    DeviceMemory {
        device: d.device.to_string(),
        name: d.name.clone(),
        source: d.source.as_str(),
        total_mb: d.total_mb,
        reserved_mb: d.reserved_mb,
        free_mb: d.free_mb,
        process_growth_mb: d.process_growth_mb,
        used_mb: d.used_mb,
        utilization_percent: d.utilization_percent,
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct Refused {
    replica: String,
    required_mb: u64,
    free_mb: u64,
    reason: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Performance {
    requests_total: u64,
    errors_total: u64,
    /// Over the last minute.
    models: BTreeMap<String, ModelPerformance>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ModelPerformance {
    requests: u64,
    errors: u64,
    request_rate_per_s: f64,
    error_rate: f64,
    /// Of successes; `null` before the first.
    #[schema(value_type = Option<Object>)]
    latency_ms: Option<Percentiles>,
    /// Answers since start by the HTTP status sent: `{"200": 40, "429": 2}`.
    #[schema(value_type = BTreeMap<String, u64>)]
    statuses: BTreeMap<u16, u64>,
    /// With `latency_target_ms`: how its successes of the last minute
    /// kept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_target: Option<TargetPerformance>,
}

/// A model's last minute against its latency target.
#[derive(Serialize, utoipa::ToSchema)]
struct TargetPerformance {
    target_ms: u64,
    /// Successes answered within the target, and past it.
    within_target: u64,
    past_target: u64,
    /// Share of successes within the target; `null` before the first.
    attainment: Option<f64>,
    /// Successes within the target per second (goodput).
    goodput_per_s: f64,
}

fn performance(
    w: WindowSummary,
    statuses: BTreeMap<u16, u64>,
    target_ms: Option<u64>,
) -> ModelPerformance {
    let answered = w.within_target + w.past_target;
    ModelPerformance {
        latency_target: target_ms.map(|target_ms| TargetPerformance {
            target_ms,
            within_target: w.within_target,
            past_target: w.past_target,
            attainment: (answered > 0)
                .then(|| (w.within_target as f64 / answered as f64 * 1e4).round() / 1e4),
            goodput_per_s: (w.within_target as f64 / w.covered_s * 1000.0).round() / 1000.0,
        }),
        statuses,
        requests: w.requests,
        errors: w.errors,
        request_rate_per_s: (w.rate * 1000.0).round() / 1000.0,
        error_rate: if w.requests == 0 {
            0.0
        } else {
            w.errors as f64 / w.requests as f64
        },
        latency_ms: w.latency_ms,
    }
}

fn pool(m: &ModelSnapshot, mailbox_refusals: u64) -> Pool {
    let b = &m.batcher;
    Pool {
        version: m.version.clone(),
        ready: m.ready_replicas > 0,
        residency: m.residency.as_str(),
        pinned: m.pinned,
        min_replicas: m.min_replicas,
        max_replicas: m.max_replicas,
        memory_mb_per_replica: m.memory_mb_per_replica,
        usage: Usage {
            requests_since_load: m.requests_since_load,
            demand: (m.demand * 100.0).round() / 100.0,
            load_ms: m.load_ms,
            idle_s: m.idle_s.map(|s| (s * 1000.0).round() / 1000.0),
        },
        replicas: b
            .replicas
            .iter()
            .map(|r| Replica {
                id: r.id,
                state: r.state.name(),
                device: r.device.map(|d| d.to_string()),
                reason: match &r.state {
                    ReplicaState::Failed(why) | ReplicaState::Refused(why) => Some(why.clone()),
                    ReplicaState::Loading | ReplicaState::Ready | ReplicaState::Draining => None,
                },
                inflight: r.inflight,
                processed: r.processed,
                errors: r.errors,
                restarts: r.restarts,
                reserved_mb: r.reserved_mb,
                measured_mb: r.measured_mb,
                weights_mapped: r.weights_mapped,
                run_ms: r
                    .run_ms
                    .iter()
                    .map(|&(items, ms)| (items, (ms * 1000.0).round() / 1000.0))
                    .collect(),
            })
            .collect(),
        batcher: BatcherStats {
            queue_depth: b.queue_depth,
            batches: b.counters.batches,
            items: b.counters.items,
            inline_runs: b.counters.inline_runs,
            avg_batch_size: if b.counters.batches == 0 {
                0.0
            } else {
                b.counters.items as f64 / b.counters.batches as f64
            },
            max_batch_size: b.max_batch_size,
            cap_reason: b.cap_reason.as_str(),
            memory_per_item_mb: b.memory_per_item_mb,
            window_ms: b.window_ms,
            expired: b.counters.expired,
            cancelled: b.counters.cancelled,
            rejected: b.counters.rejected + mailbox_refusals,
            batch_fill: b
                .counters
                .batch_sizes
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(size, n)| (size, *n))
                .collect(),
            latency: b.latency.as_ref().map(|l| LatencyStats {
                target_ms: l.target_ms,
                refused_early: l.refused_early,
                refused_at_door: l.refused_at_door,
                predicted_ms: l.predicted_ms.map(|ms| (ms * 1000.0).round() / 1000.0),
            }),
        },
    }
}

#[utoipa::path(get, path = "/api/optimized/stats", tag = "operations",
    responses((status = 200, description = "Replicas, batchers, memory and performance", body = Stats), super::schemas::ServerErrors))]
async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let snapshot = state.service.snapshot().await?;
    let gate = gantry_actors::engine::pool_gate::POOL_GATE.stats();
    let metrics = state.service.metrics();
    let stats = Stats {
        uptime_s: (snapshot.uptime_s * 1000.0).round() / 1000.0,
        model_pools: snapshot
            .models
            .iter()
            .map(|m| (m.name.clone(), pool(m, metrics.mailbox_refusals(&m.name))))
            .collect(),
        memory: Memory {
            source: snapshot.memory.source.as_str(),
            total_mb: snapshot.memory.total_mb,
            reserved_mb: snapshot.memory.reserved_mb,
            free_mb: snapshot.memory.free_mb,
            devices: snapshot.memory.devices.iter().map(device_memory).collect(),
            refused: snapshot
                .memory
                .refused
                .iter()
                .map(|r| Refused {
                    replica: r.owner.clone(),
                    required_mb: r.required_mb,
                    free_mb: r.free_mb,
                    reason: r.reason.clone(),
                })
                .collect(),
        },
        residency: ResidencyStats {
            min_residency_ms: snapshot.min_residency_ms,
            decisions: snapshot
                .decisions
                .iter()
                .map(|d| Decision {
                    at_unix_ms: d.at_unix_ms,
                    model: d.model.clone(),
                    action: d.action.as_str(),
                    reason: d.reason.clone(),
                })
                .collect(),
        },
        runtime: Runtime {
            intra_op_threads: gantry_actors::engine::onnx::shared_pool_threads(),
            exclusive_run_ms: gate.threshold_us as f64 / 1000.0,
            inline_run_us: gantry_actors::inline_run::threshold().as_micros() as u64,
            pool_gate: PoolGate {
                gated_runs: gate.gated_runs,
                waited_runs: gate.waited_runs,
                wait_ms_total: gate.wait_us as f64 / 1000.0,
            },
        },
        performance_metrics: Performance {
            requests_total: metrics.requests_total(),
            errors_total: metrics.errors_total(),
            models: snapshot
                .models
                .iter()
                .map(|m| {
                    let summary = metrics.summary(&m.name);
                    let target_ms = m.batcher.latency.as_ref().map(|l| l.target_ms);
                    (
                        m.name.clone(),
                        performance(summary, metrics.statuses(&m.name), target_ms),
                    )
                })
                .collect(),
        },
        cache: state.service.cache_stats(),
        connection_pools: ConnectionPools {
            redis: Some(state.service.redis_status())
                .filter(|s| *s != "disabled")
                .map(|status| RedisPool { status }),
            postgres: state.service.store_stats(),
        },
        failed_models: snapshot
            .load_errors
            .iter()
            .map(|e| (e.model.clone(), e.error.clone()))
            .collect(),
    };
    Ok(HttpResponse::Ok().json(stats))
}
