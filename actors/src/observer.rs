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
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl BatchObserver for NoObserver {
    fn batch_finished(&self, _: &BatchReport<'_>) {}
}
