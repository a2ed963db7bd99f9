//! Triton's statistics extension (`GET /v2/models[/{m}]/stats`): per model,
//! counts and cumulative nanoseconds of successful and failed requests,
//! queueing, the three compute phases, cache hits and misses, and the same
//! phases per batch size.
//!
//! Every counter is an atomic, so recording costs a few uncontended
//! additions: a model's entry is found under a read lock (written once,
//! when the model first serves), and batch sizes up to
//! [`TRACKED_BATCH_SIZES`] index a fixed array; larger ones (models
//! configured beyond it) go to a small locked map.
//!
//! Counts follow Triton: `inference_count` counts batch items of successful
//! requests (cache hits included), `execution_count` counts batches run;
//! each request that ran counts once in `queue` and the compute phases,
//! with its batch's times.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

/// Batch sizes counted in the lock-free array.
pub const TRACKED_BATCH_SIZES: usize = 1024;

/// A count and the nanoseconds it took in all.
#[derive(Default)]
struct Timed {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Timed {
    fn add(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            took.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count.load(Ordering::Relaxed),
            "ns": self.ns.load(Ordering::Relaxed),
        })
    }
}

/// The three compute phases of one batch size.
#[derive(Default)]
struct Phases {
    input: Timed,
    infer: Timed,
    output: Timed,
}

impl Phases {
    fn add(&self, phases: &ComputeTimes) {
        self.input.add(phases.input);
        self.infer.add(phases.infer);
        self.output.add(phases.output);
    }

    fn json(&self, batch_size: usize) -> Value {
        json!({
            "batch_size": batch_size,
            "compute_input": self.input.json(),
            "compute_infer": self.infer.json(),
            "compute_output": self.output.json(),
        })
    }
}

/// How long a batch spent stacking its inputs, in the engine, and
/// splitting its outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ComputeTimes {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

/// One answered request, as the statistics count it.
pub struct RequestOutcome {
    pub ok: bool,
    /// From arrival to answer.
    pub duration: Duration,
    /// Items it held (its batch dimension).
    pub items: usize,
    /// Time in the queue and its batch's phases, when it ran.
    pub ran: Option<(Duration, ComputeTimes)>,
    /// `Some(true)` for a cache hit, `Some(false)` for a miss, with the
    /// time the lookup took; `None` when the cache was not asked.
    pub cache: Option<(bool, Duration)>,
}

/// One model's counters.
struct ModelStatistics {
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: Timed,
    fail: Timed,
    queue: Timed,
    compute: Phases,
    cache_hit: Timed,
    cache_miss: Timed,
    batches: Box<[Phases]>,
    large_batches: Mutex<BTreeMap<usize, Phases>>,
}

impl Default for ModelStatistics {
    fn default() -> Self {
        ModelStatistics {
            last_inference_ms: AtomicU64::new(0),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            success: Timed::default(),
            fail: Timed::default(),
            queue: Timed::default(),
            compute: Phases::default(),
            cache_hit: Timed::default(),
            cache_miss: Timed::default(),
            batches: (0..TRACKED_BATCH_SIZES)
                .map(|_| Phases::default())
                .collect(),
            large_batches: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Every model's counters, by name (kept across reloads of a model).
#[derive(Default)]
pub struct Statistics {
    models: RwLock<HashMap<String, Arc<ModelStatistics>>>,
}

impl Statistics {
    fn model(&self, name: &str) -> Arc<ModelStatistics> {
        if let Some(found) = self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return found.clone();
        }
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Counts one request answered for `model`.
    pub fn record_request(&self, model: &str, outcome: &RequestOutcome) {
        let stats = self.model(model);
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        stats.last_inference_ms.fetch_max(now_ms, Ordering::Relaxed);
        if outcome.ok {
            stats.success.add(outcome.duration);
            stats
                .inference_count
                .fetch_add(outcome.items as u64, Ordering::Relaxed);
        } else {
            stats.fail.add(outcome.duration);
        }
        match outcome.cache {
            Some((true, took)) => stats.cache_hit.add(took),
            Some((false, took)) => stats.cache_miss.add(took),
            None => {}
        }
        if let Some((queued, phases)) = &outcome.ran {
            stats.queue.add(*queued);
            stats.compute.add(phases);
        }
    }

    /// Counts one batch of `size` items that `model` ran.
    pub fn record_batch(&self, model: &str, size: usize, phases: &ComputeTimes) {
        let stats = self.model(model);
        stats.execution_count.fetch_add(1, Ordering::Relaxed);
        match size.checked_sub(1).and_then(|i| stats.batches.get(i)) {
            Some(slot) => slot.add(phases),
            None => stats
                .large_batches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(size)
                .or_default()
                .add(phases),
        }
    }

    /// Triton's statistics entry of `model` serving `version` (zeros when
    /// it has served nothing yet).
    pub fn model_stats(&self, model: &str, version: &str) -> Value {
        let stats = self.model(model);
        let mut batch_stats: Vec<Value> = stats
            .batches
            .iter()
            .enumerate()
            .filter(|(_, p)| p.infer.count.load(Ordering::Relaxed) > 0)
            .map(|(i, p)| p.json(i + 1))
            .collect();
        let large = stats
            .large_batches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        batch_stats.extend(large.iter().map(|(size, p)| p.json(*size)));
        json!({
            "name": model,
            "version": version,
            "last_inference": stats.last_inference_ms.load(Ordering::Relaxed),
            "inference_count": stats.inference_count.load(Ordering::Relaxed),
            "execution_count": stats.execution_count.load(Ordering::Relaxed),
            "inference_stats": {
                "success": stats.success.json(),
                "fail": stats.fail.json(),
                "queue": stats.queue.json(),
                "compute_input": stats.compute.input.json(),
                "compute_infer": stats.compute.infer.json(),
                "compute_output": stats.compute.output.json(),
                "cache_hit": stats.cache_hit.json(),
                "cache_miss": stats.cache_miss.json(),
            },
            "batch_stats": batch_stats,
            "memory_usage": [],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_follow_triton() {
        let stats = Statistics::default();
        let phases = ComputeTimes {
            input: ms(1),
            infer: ms(2),
            output: ms(3),
        };
        stats.record_batch("m", 3, &phases);
        stats.record_batch("m", 5000, &phases);
        for items in [1, 2] {
            stats.record_request(
                "m",
                &RequestOutcome {
                    ok: true,
                    duration: ms(10),
                    items,
                    ran: Some((ms(4), phases)),
                    cache: Some((false, ms(1))),
                },
            );
        }
        stats.record_request(
            "m",
            &RequestOutcome {
                ok: true,
                duration: ms(1),
                items: 4,
                ran: None,
                cache: Some((true, ms(1))),
            },
        );
        stats.record_request(
            "m",
            &RequestOutcome {
                ok: false,
                duration: ms(2),
                items: 1,
                ran: None,
                cache: None,
            },
        );
        let v = stats.model_stats("m", "v1");
        assert_eq!(v["inference_count"], 7);
        assert_eq!(v["execution_count"], 2);
        let s = &v["inference_stats"];
        assert_eq!(s["success"], json!({"count": 3, "ns": 21_000_000}));
        assert_eq!(s["fail"], json!({"count": 1, "ns": 2_000_000}));
        assert_eq!(s["queue"], json!({"count": 2, "ns": 8_000_000}));
        assert_eq!(s["compute_infer"], json!({"count": 2, "ns": 4_000_000}));
        assert_eq!(s["cache_hit"]["count"], 1);
        assert_eq!(s["cache_miss"]["count"], 2);
        let sizes: Vec<&Value> = v["batch_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| &b["batch_size"])
            .collect();
        assert_eq!(sizes, [&json!(3), &json!(5000)]);
        assert_eq!(v["batch_stats"][0]["compute_output"]["ns"], 3_000_000);
        assert!(v["last_inference"].as_u64().unwrap() > 1_700_000_000_000);
    }
}
