//! What a batcher reports for stats and metrics: its answer to
//! [`GetBatcherSnapshot`].

use actix::Handler;

use super::Batcher;
use crate::memory::Reservation;
use crate::messages::{
    BatcherSnapshot, CapReason, GetBatcherSnapshot, LatencySnapshot, ReplicaSnapshot,
};

impl Batcher {
    /// Its counters with the runs its lane made on workers' threads.
    fn counters_with_inline(&self) -> crate::messages::BatcherCounters {
        let mut counters = self.counters.clone();
        let inline = self.state.inline.counters();
        counters.batches += inline.runs;
        counters.inline_runs = inline.runs;
        counters.items += inline.items;
        if counters.batch_sizes.len() < inline.sizes.len() {
            counters.batch_sizes.resize(inline.sizes.len(), 0);
        }
        for (size, runs) in inline.sizes.iter().enumerate() {
            counters.batch_sizes[size] += runs;
        }
        counters
    }
}

impl Handler<GetBatcherSnapshot> for Batcher {
    type Result = actix::MessageResult<GetBatcherSnapshot>;

    fn handle(&mut self, _: GetBatcherSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        let (model_cap, mut cap_reason) = self.cap();
        let (max_batch_size, window) = self.limits(self.ready_index().unwrap_or(0));
        if max_batch_size < model_cap {
            cap_reason = CapReason::LatencyTarget;
        }
        let at_door = self.state.door.refused();
        let latency = self.latency.target().map(|target| LatencySnapshot {
            target_ms: target.as_millis() as u64,
            refused_early: self.latency.refused_early + at_door,
            refused_at_door: at_door,
            predicted_ms: self.latency.last_prediction.map(|p| p.as_secs_f64() * 1e3),
        });
        actix::MessageResult(BatcherSnapshot {
            queue_depth: self.queue.len(),
            queue_capacity: self.queue_capacity,
            max_batch_size,
            cap_reason,
            memory_per_item_mb: self.memory_per_item_mb,
            window_ms: window.as_millis() as u64,
            counters: self.counters_with_inline(),
            replicas: self
                .replicas
                .iter()
                .map(|r| ReplicaSnapshot {
                    id: r.id,
                    device: r.reservation.as_ref().and_then(Reservation::device),
                    state: r.state.clone(),
                    inflight: r.inflight_items,
                    processed: r.processed + r.engine.as_ref().map_or(0, |e| e.inline_items()),
                    errors: r.errors,
                    restarts: r.restarts,
                    last_error: r.last_error.clone(),
                    reserved_mb: r
                        .reservation
                        .as_ref()
                        .filter(|held| held.is_granted())
                        .map_or(0, Reservation::mb),
                    measured_mb: r.measured_mb,
                    weights_mapped: r.weights_mapped,
                    run_ms: self.latency.profile(r.id).map_or_else(Vec::new, |p| {
                        p.medians()
                            .into_iter()
                            .map(|(items, t)| (items, t.as_secs_f64() * 1e3))
                            .collect()
                    }),
                })
                .collect(),
            latency,
        })
    }
}
