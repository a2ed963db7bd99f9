//! What a batcher reports for stats and metrics: its answer to
//! [`GetBatcherSnapshot`].

use actix::Handler;

use super::Batcher;
use crate::memory::Reservation;
use crate::messages::{BatcherSnapshot, GetBatcherSnapshot, ReplicaSnapshot};

impl Handler<GetBatcherSnapshot> for Batcher {
    type Result = actix::MessageResult<GetBatcherSnapshot>;

    fn handle(&mut self, _: GetBatcherSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        let (max_batch_size, cap_reason) = self.cap();
        actix::MessageResult(BatcherSnapshot {
            queue_depth: self.queue.len(),
            queue_capacity: self.queue_capacity,
            max_batch_size,
            cap_reason,
            memory_per_item_mb: self.memory_per_item_mb,
            window_ms: self.window.as_millis() as u64,
            counters: self.counters.clone(),
            replicas: self
                .replicas
                .iter()
                .map(|r| ReplicaSnapshot {
                    id: r.id,
                    device: r.reservation.as_ref().and_then(Reservation::device),
                    state: r.state.clone(),
                    inflight: r.inflight_items,
                    processed: r.processed,
                    errors: r.errors,
                    restarts: r.restarts,
                    last_error: r.last_error.clone(),
                    reserved_mb: r
                        .reservation
                        .as_ref()
                        .filter(|held| held.is_granted())
                        .map_or(0, Reservation::mb),
                    measured_mb: r.measured_mb,
                })
                .collect(),
        })
    }
}
