//! Readiness changes, as they happen: a model's first replica turns ready
//! or its last one stops being ready, a model joins or leaves the served
//! set. Whoever reports readiness elsewhere (the gRPC health service)
//! waits on [`Readiness::subscribe`] instead of polling, so it follows
//! each change at once.

use std::sync::Arc;

use tokio::sync::watch;

/// A counter of readiness changes that anyone may wait on.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<watch::Sender<u64>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(watch::channel(0).0))
    }
}

impl Readiness {
    /// Something readiness depends on has changed.
    pub fn changed(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver woken by every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_sees_a_change_made_before_it_waits() {
        let readiness = Readiness::default();
        let mut changes = readiness.subscribe();
        readiness.changed();
        tokio::time::timeout(std::time::Duration::from_secs(5), changes.changed())
            .await
            .expect("woken")
            .expect("sender alive");
    }
}
