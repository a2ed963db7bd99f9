//! A hook for what happens to batches, so the application can export
//! metrics without the core depending on a metrics library.

use std::time::Duration;

/// One batch a replica ran, as its observer is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchReport<'a> {
    pub model: &'a str,
    pub replica: usize,
    pub items: usize,
    /// The whole run: stacking, the engine, splitting and answering.
    pub inference: Duration,
    /// Stacking the requests' inputs into the batch.
    pub input: Duration,
    /// In the engine.
    pub infer: Duration,
    /// Splitting the outputs back into the requests' rows.
    pub output: Duration,
    pub ok: bool,
}

/// Told about every batch a replica ran. Called on the replica's thread:
/// implementations must be cheap and must not block.
pub trait BatchObserver: Send + Sync {
    fn batch_finished(&self, batch: &BatchReport<'_>);

    /// A request for `model` waited `waited` for a replica of it to load
    /// (the model was out of memory when it came).
    fn load_waited(&self, _model: &str, _waited: Duration) {}

    /// The supervisor decided something about what is in memory (see
    /// [`ResidencyDecision`]).
    fn residency_decided(&self, _decision: &ResidencyDecision) {}
}

/// One decision about what is in memory, with its reason in words.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidencyDecision {
    /// When it was taken, in ms since the Unix epoch.
    pub at_unix_ms: u64,
    pub model: String,
    pub action: ResidencyAction,
    pub reason: String,
}

/// What a [`ResidencyDecision`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResidencyAction {
    /// Started a replica of a model requests wait for.
    Load,
    /// Gave a replica's memory to a model that needed it.
    Evict,
    /// Gave back a replica of a model idle for `downscale_delay_s`, or
    /// one added by a scale-up once the backlog was gone that long.
    ScaleDown,
    /// Added a replica to a model whose queue stayed longer than its
    /// replicas drain for `upscale_delay_s`.
    ScaleUp,
    /// Took back a replica a scale-up added that did not raise the model's
    /// throughput.
    UndoScaleUp,
    /// Loaded a packed replica to replace one that maps its weights, its
    /// model's batches being large enough to gain (see [`crate::repack`]).
    Repack,
}

impl ResidencyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ResidencyAction::Load => "load",
            ResidencyAction::Evict => "evict",
            ResidencyAction::ScaleDown => "scale_down",
            ResidencyAction::ScaleUp => "scale_up",
            ResidencyAction::UndoScaleUp => "undo_scale_up",
            ResidencyAction::Repack => "repack",
        }
    }
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl BatchObserver for NoObserver {
    fn batch_finished(&self, _: &BatchReport<'_>) {}
}
