//! A hook for what happens to batches, so the application can export
//! metrics without the core depending on a metrics library.

use std::time::Duration;

/// Told about every batch a replica ran. Called on the replica's thread:
/// implementations must be cheap and must not block.
pub trait BatchObserver: Send + Sync {
    fn batch_finished(
        &self,
        model: &str,
        replica: usize,
        items: usize,
        inference: Duration,
        ok: bool,
    );
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl BatchObserver for NoObserver {
    fn batch_finished(&self, _: &str, _: usize, _: usize, _: Duration, _: bool) {}
}
