//! Request and batch metrics: one [`Metrics`] per server records every
//! prediction request (once, with the status it was answered) and every
//! batch, and serves both the per-model numbers of `/api/optimized/stats`
//! and the Prometheus page.

mod devices;
pub mod prometheus;
pub mod residency;
pub mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use gantry_actors::observer::{BatchObserver, BatchReport, ResidencyDecision};

use crate::triton::statistics::{ComputeTimes, Statistics};

use self::prometheus::{EventSeries, ModelLabels, StatusLabels, UNKNOWN_MODEL};
use self::window::{Window, WindowSummary};

/// Everything recorded about requests and batches.
pub struct Metrics {
    epoch: Instant,
    requests_total: AtomicU64,
    errors_total: AtomicU64,
    windows: RwLock<HashMap<String, Arc<Mutex<Window>>>>,
    /// Answers since start per served model, by HTTP status.
    statuses: Mutex<HashMap<String, BTreeMap<u16, u64>>>,
    pub series: EventSeries,
    /// Triton's statistics extension.
    pub statistics: Statistics,
}

impl Default for Metrics {
    /// Latency buckets reaching the default request timeout.
    fn default() -> Self {
        Metrics::new(EventSeries::default())
    }
}

impl Metrics {
    /// Metrics over `series` (whose latency buckets reach the server's
    /// request timeout: [`EventSeries::new`]).
    pub fn new(series: EventSeries) -> Self {
        Metrics {
            epoch: Instant::now(),
            requests_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            windows: RwLock::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            series,
            statistics: Statistics::default(),
        }
    }
}

/// One answered prediction request, with the status it was answered.
pub struct RequestRecord<'a> {
    /// `Some` only for served models, so unknown names cannot grow the maps.
    pub model: Option<&'a str>,
    pub status: u16,
    pub duration: Duration,
    /// Time in the batcher, for requests that reached a replica.
    pub queued: Option<Duration>,
    /// The model's `latency_target_ms`, if it has one: a success counts
    /// within or past it.
    pub target: Option<Duration>,
}

impl Metrics {
    /// Records how long a file prediction spent preparing its upload and
    /// shaping its answer.
    pub fn record_media(&self, model: &str, prepare: Duration, postprocess: Duration) {
        let labels = ModelLabels {
            model: model.to_string(),
        };
        let series = &self.series;
        series
            .media_prepare_duration
            .get_or_create(&labels)
            .observe(prepare.as_secs_f64());
        series
            .media_postprocess_duration
            .get_or_create(&labels)
            .observe(postprocess.as_secs_f64());
    }

    /// Counts a prediction request in stats and in Prometheus.
    pub fn record(&self, r: RequestRecord) {
        let ok = r.status < 400;
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        let label = r.model.unwrap_or(UNKNOWN_MODEL).to_string();
        self.series
            .requests
            .get_or_create(&StatusLabels {
                model: label.clone(),
                status: r.status.to_string(),
            })
            .inc();
        let Some(model) = r.model else { return };
        *self
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(model.to_string())
            .or_default()
            .entry(r.status)
            .or_default() += 1;
        let model_label = ModelLabels { model: label };
        self.series
            .request_duration
            .get_or_create(&model_label)
            .observe(r.duration.as_secs_f64());
        if let Some(queued) = r.queued {
            self.series
                .queue_duration
                .get_or_create(&model_label)
                .observe(queued.as_secs_f64());
        }
        // Decided once, for Prometheus and the stats window alike.
        let within = r.target.filter(|_| ok).map(|target| r.duration <= target);
        if let Some(within) = within {
            self.series.answered_for_target(&model_label, within);
        }
        let window = self.window(model);
        let latency_ms = r.duration.as_secs_f64() * 1000.0;
        window.lock().unwrap_or_else(|e| e.into_inner()).record(
            Instant::now(),
            ok,
            latency_ms,
            within,
        );
    }

    fn window(&self, model: &str) -> Arc<Mutex<Window>> {
        if let Some(found) = self
            .windows
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
        {
            return found.clone();
        }
        self.windows
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(model.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Window::new(self.epoch))))
            .clone()
    }

    /// Counts a request the model's batcher never saw because its mailbox
    /// was full (answered 429 like a full queue, and counted with its
    /// refusals).
    pub fn record_mailbox_refusal(&self, model: &str) {
        self.series.mailbox_refusal(model);
    }

    /// Requests refused at `model`'s full batcher mailbox since start.
    pub fn mailbox_refusals(&self, model: &str) -> u64 {
        self.series.mailbox_refusals(model)
    }

    /// `model`'s answers since start, by HTTP status.
    pub fn statuses(&self, model: &str) -> BTreeMap<u16, u64> {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .cloned()
            .unwrap_or_default()
    }

    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors_total.load(Ordering::Relaxed)
    }

    /// A model's last minute (zeros if it has served nothing).
    pub fn summary(&self, model: &str) -> WindowSummary {
        let window = self.window(model);
        let mut window = window.lock().unwrap_or_else(|e| e.into_inner());
        window.summary(Instant::now())
    }
}

impl BatchObserver for Metrics {
    fn batch_finished(&self, batch: &BatchReport<'_>) {
        let labels = ModelLabels {
            model: batch.model.to_string(),
        };
        self.series
            .inference_duration
            .get_or_create(&labels)
            .observe(batch.inference.as_secs_f64());
        self.series
            .batch_size
            .get_or_create(&labels)
            .observe(batch.items as f64);
        let phases = ComputeTimes {
            input: batch.input,
            infer: batch.infer,
            output: batch.output,
        };
        self.statistics
            .record_batch(batch.model, batch.items, &phases);
    }

    fn load_waited(&self, model: &str, waited: Duration) {
        self.series.residency.waited(model, waited);
    }

    fn residency_decided(&self, decision: &ResidencyDecision) {
        self.series.residency.decided(decision);
    }
}
