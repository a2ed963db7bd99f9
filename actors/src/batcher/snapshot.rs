//! What a batcher reports for stats and metrics.

use actix::{Handler, Message};

use super::replicas::ReplicaState;
use super::{Batcher, BatcherCounters, CapReason};
use crate::device::Device;
use crate::memory::Reservation;

/// One replica's view for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSnapshot {
    pub id: usize,
    /// Where it runs; `None` while refused (it holds no device yet).
    pub device: Option<Device>,
    pub state: ReplicaState,
    pub inflight: usize,
    pub processed: u64,
    pub errors: u64,
    pub restarts: u64,
    /// Why its last start failed, until it is ready again (a restart
    /// after a failure shows `loading` with the failure kept here).
    pub last_error: Option<String>,
}

/// A batcher's view for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct BatcherSnapshot {
    pub queue_depth: usize,
    /// Requests the queue holds at most (`queue_capacity`); beyond, 429.
    pub queue_capacity: usize,
    /// The batch cap in force now.
    pub max_batch_size: usize,
    /// What set it.
    pub cap_reason: CapReason,
    /// MB one item needs, when configured or measured.
    pub memory_per_item_mb: Option<u64>,
    pub window_ms: u64,
    pub counters: BatcherCounters,
    pub replicas: Vec<ReplicaSnapshot>,
}

/// Asks a batcher for its snapshot.
#[derive(Message)]
#[rtype(result = "BatcherSnapshot")]
pub struct GetBatcherSnapshot;

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
                })
                .collect(),
        })
    }
}
