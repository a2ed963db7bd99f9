//! A model's state shared by its batcher (which writes it) and everyone
//! who reads it without a message: its signature once a replica loaded,
//! ready replicas, residency (in memory, loading, cold, failed), measured
//! footprint and use.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::admission::AdmissionDoor;
use crate::engine::mapped_weights;
use crate::inline_run::InlineLane;
use crate::readiness::Readiness;
use crate::repository::ModelSpec;
use crate::signature::ModelSignature;
use crate::usage::{LearnedFootprints, ModelUsage};

/// Whether a model is in memory, as its batcher last saw its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Residency {
    /// Registered; its first replicas have not reported yet.
    Starting,
    /// A replica is loading and none is ready.
    Loading,
    /// At least one replica is ready.
    Resident,
    /// No replica in memory (it did not fit, was evicted or left idle):
    /// available, and loaded when a request asks for it.
    Cold,
    /// It cannot serve: its replicas failed, or it can never fit.
    Failed(String),
}

impl Residency {
    pub fn as_str(&self) -> &'static str {
        match self {
            Residency::Starting => "starting",
            Residency::Loading => "loading",
            Residency::Resident => "resident",
            Residency::Cold => "cold",
            Residency::Failed(_) => "failed",
        }
    }

    fn code(&self) -> u8 {
        match self {
            Residency::Starting => 0,
            Residency::Loading => 1,
            Residency::Resident => 2,
            Residency::Cold => 3,
            Residency::Failed(_) => 4,
        }
    }
}

/// State shared by a model's batcher (which writes it) and its handle (read
/// on every request, without a message round trip).
#[derive(Debug, Default)]
pub struct ModelState {
    signature: OnceLock<ModelSignature>,
    ready_replicas: AtomicUsize,
    loading_replicas: AtomicUsize,
    desired_replicas: AtomicUsize,
    /// Told when the model turns ready or stops being ready.
    readiness: Readiness,
    /// The footprint its replicas were last measured to hold (0: not yet).
    measured_mb: AtomicU64,
    /// [`Residency::code`] of its residency; the failure's reason beside.
    residency: AtomicU8,
    failure: Mutex<Option<String>>,
    /// It has been resident or cold (servable) at least once.
    served_before: AtomicBool,
    /// Bumped when the signature is set or the residency changes: whoever
    /// waits for a model to load waits on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// How it is used, for the supervisor's residency decisions.
    pub usage: ModelUsage,
    /// Its batcher's predictions, for admission where requests arrive.
    pub door: AdmissionDoor,
    /// Short runs on the thread that received the request, while its
    /// batcher allows them.
    pub inline: InlineLane,
    /// Footprints measured across the process, for opening bids.
    footprints: LearnedFootprints,
}

impl ModelState {
    /// The state of a model whose readiness changes go to `readiness`.
    pub fn new(readiness: Readiness, footprints: LearnedFootprints) -> ModelState {
        ModelState {
            readiness,
            footprints,
            ..ModelState::default()
        }
    }

    /// What a new replica of `spec` reserves: model.toml's `memory_mb`,
    /// else the largest footprint a replica of it measured, else its file
    /// plus the most replicas of other models measured beyond theirs (see
    /// [`LearnedFootprints`]), else the file-based estimate. `true` with it
    /// when it is the configured figure.
    pub fn reservation_mb(&self, spec: &ModelSpec) -> (u64, bool) {
        match (spec.settings.memory_mb, self.measured_mb()) {
            (Some(configured), _) => (configured, true),
            (None, Some(measured)) => (measured, false),
            (None, None) => (self.opening_bid(spec.file_mb, spec.memory_mb), false),
        }
    }

    /// What a replica of `spec` reserves beyond its footprint while it
    /// loads on the CPU: its file, which ONNX Runtime holds beside the
    /// weights it builds from it (none when `memory_mb` sets the figure).
    /// The reservation shrinks to the footprint once the replica has
    /// loaded, so a load in room an eviction made never takes the process
    /// past the budget. A replica that maps its weights holds nothing
    /// beside them (see [`ModelState::loads_mapped`]).
    pub fn load_headroom_mb(&self, spec: &ModelSpec) -> u64 {
        match spec.settings.memory_mb {
            Some(_) => 0,
            None => self.headroom_for(spec.file_mb),
        }
    }

    /// The headroom of a load of a `file_mb` file with no `memory_mb` set.
    pub(crate) fn headroom_for(&self, file_mb: u64) -> u64 {
        if self.loads_mapped() {
            0
        } else {
            file_mb
        }
    }

    /// True when a replica starting now maps its weights (see
    /// [`crate::engine::mapped_weights`]): the server maps them, and the
    /// model is out of memory (its residency, as its batcher last
    /// published it, is cold: not at startup, not a replica added beside
    /// serving ones), so requests wait for this load.
    pub(crate) fn loads_mapped(&self) -> bool {
        mapped_weights::enabled() && self.residency() == Residency::Cold
    }

    /// The bid of a model never measured whose file is `file_mb` and whose
    /// file-based estimate is `estimate_mb` (see [`LearnedFootprints`]).
    pub(crate) fn opening_bid(&self, file_mb: u64, estimate_mb: u64) -> u64 {
        self.footprints.estimate(file_mb, estimate_mb)
    }

    /// Notes what a replica measured, for this model and every other's
    /// opening bid.
    pub(crate) fn learn_footprint(&self, file_mb: u64, measured_mb: u64) {
        self.raise_measured_mb(measured_mb);
        self.footprints.learn(file_mb, measured_mb);
    }

    pub fn signature(&self) -> Option<&ModelSignature> {
        self.signature.get()
    }

    /// Records the signature the first replica read from its session.
    pub fn set_signature(&self, signature: ModelSignature) {
        if self.signature.set(signature).is_ok() {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Whether the model is in memory now.
    pub fn residency(&self) -> Residency {
        match self.residency.load(Ordering::Acquire) {
            0 => Residency::Starting,
            1 => Residency::Loading,
            2 => Residency::Resident,
            3 => Residency::Cold,
            _ => Residency::Failed(
                self.failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_default(),
            ),
        }
    }

    /// Notes the model's residency; a change wakes whoever waits on it.
    pub(crate) fn set_residency(&self, residency: Residency) {
        let was_servable = self.is_servable();
        if let Residency::Failed(reason) = &residency {
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        }
        if matches!(residency, Residency::Resident | Residency::Cold) {
            self.served_before.store(true, Ordering::Release);
        }
        let before = self.residency.swap(residency.code(), Ordering::AcqRel);
        if before != residency.code() || matches!(residency, Residency::Failed(_)) {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        if was_servable != self.is_servable() {
            self.readiness.changed();
        }
    }

    /// True when the model can take requests: resident, or out of memory
    /// but able to load (cold), or loading after it was either (a load on
    /// request, not the first one at startup).
    pub fn is_servable(&self) -> bool {
        match self.residency() {
            Residency::Resident | Residency::Cold => true,
            Residency::Loading => self.served_before.load(Ordering::Acquire),
            Residency::Starting | Residency::Failed(_) => false,
        }
    }

    /// Waits until the signature is set or the residency changes, or
    /// until `until`.
    pub(crate) async fn signature_change(&self, until: Instant) {
        let mut changes = self.changes.subscribe();
        if self.signature().is_some() || matches!(self.residency(), Residency::Failed(_)) {
            return;
        }
        let _ = tokio::time::timeout_at(until.into(), changes.changed()).await;
    }

    pub fn ready_replicas(&self) -> usize {
        self.ready_replicas.load(Ordering::Relaxed)
    }

    /// Replicas loading now.
    pub fn loading_replicas(&self) -> usize {
        self.loading_replicas.load(Ordering::Relaxed)
    }

    pub(crate) fn set_loading_replicas(&self, n: usize) {
        self.loading_replicas.store(n, Ordering::Relaxed);
    }

    pub fn set_ready_replicas(&self, n: usize) {
        self.ready_replicas.store(n, Ordering::Relaxed);
    }

    /// The largest MB a replica of this model (on the CPU) was measured to
    /// hold, once one loaded where memory can be read.
    pub fn measured_mb(&self) -> Option<u64> {
        Some(self.measured_mb.load(Ordering::Relaxed)).filter(|&mb| mb > 0)
    }

    /// Notes a measured footprint; the largest one measured stays, so one
    /// low reading cannot shrink what later replicas reserve.
    pub(crate) fn raise_measured_mb(&self, mb: u64) {
        self.measured_mb.fetch_max(mb, Ordering::Relaxed);
    }

    /// Replicas the operator asked for (config or scaling).
    pub fn desired_replicas(&self) -> usize {
        self.desired_replicas.load(Ordering::Relaxed)
    }

    pub fn set_desired_replicas(&self, n: usize) {
        self.desired_replicas.store(n, Ordering::Relaxed);
    }
}
