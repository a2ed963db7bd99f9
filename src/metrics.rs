//! Request counters and per-model latency over a sliding window of recent
//! requests, for `performance_metrics` in stats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Latencies of the most recent requests kept per model.
const WINDOW: usize = 4096;

/// The last [`WINDOW`] latencies of one model, as a ring.
#[derive(Debug, Default)]
struct LatencyWindow {
    samples: Vec<f64>,
    next: usize,
}

impl LatencyWindow {
    fn push(&mut self, ms: f64) {
        if self.samples.len() < WINDOW {
            self.samples.push(ms);
        } else {
            self.samples[self.next] = ms;
            self.next = (self.next + 1) % WINDOW;
        }
    }

    fn percentiles(&self) -> Option<Percentiles> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Some(Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Default)]
struct ModelMetrics {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Mutex<LatencyWindow>,
}

/// One model's numbers, for stats.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelPerformance {
    pub requests: u64,
    pub errors: u64,
    /// Over the most recent successful requests; `null` before the first.
    pub latency_ms: Option<Percentiles>,
}

/// Counters for the whole server.
#[derive(Debug, Default)]
pub struct Metrics {
    requests_total: AtomicU64,
    errors_total: AtomicU64,
    models: RwLock<HashMap<String, Arc<ModelMetrics>>>,
}

impl Metrics {
    /// Counts a prediction request. `model` is `Some` only for served models
    /// (so unknown names cannot grow the map); `latency_ms` for successes.
    pub fn record(&self, model: Option<&str>, ok: bool, latency_ms: f64) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        let Some(model) = model else { return };
        let entry = self.model(model);
        entry.requests.fetch_add(1, Ordering::Relaxed);
        if ok {
            entry
                .latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(latency_ms);
        } else {
            entry.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn model(&self, name: &str) -> Arc<ModelMetrics> {
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

    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors_total.load(Ordering::Relaxed)
    }

    /// Numbers of one model (zeros if it has served nothing yet).
    pub fn performance(&self, model: &str) -> ModelPerformance {
        let entry = self.model(model);
        let latency_ms = entry
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .percentiles();
        ModelPerformance {
            requests: entry.requests.load(Ordering::Relaxed),
            errors: entry.errors.load(Ordering::Relaxed),
            latency_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_window() {
        let m = Metrics::default();
        for i in 1..=100 {
            m.record(Some("a"), true, i as f64);
        }
        m.record(Some("a"), false, 0.0);
        m.record(None, false, 0.0);
        let p = m.performance("a");
        assert_eq!((p.requests, p.errors), (101, 1));
        let l = p.latency_ms.unwrap();
        assert_eq!((l.p50, l.p95, l.p99), (51.0, 95.0, 99.0));
        assert_eq!((m.requests_total(), m.errors_total()), (102, 2));
    }

    #[test]
    fn window_forgets_old_samples() {
        let mut w = LatencyWindow::default();
        for _ in 0..WINDOW {
            w.push(1000.0);
        }
        for _ in 0..WINDOW {
            w.push(1.0);
        }
        assert_eq!(w.percentiles().unwrap().p99, 1.0);
    }
}
