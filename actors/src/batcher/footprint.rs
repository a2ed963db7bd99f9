//! A replica's measured footprint applied to its reservation: the
//! footprint a loaded replica measured (never below its model file) becomes
//! what it reserves on the CPU and what the model's later replicas reserve,
//! unless `memory_mb` sets the figure.

use tracing::info;

use super::Batcher;
use crate::device::Device;
use crate::memory::Resize;

impl Batcher {
    /// Replica `index`, on the CPU, was measured to hold `mb` (never taken
    /// below the model's file size): unless `memory_mb` sets the
    /// footprint, its reservation becomes that (giving back what the
    /// estimate held too much, or holding what it held too little) and the
    /// model's later replicas reserve the largest footprint measured. On a
    /// GPU the measurement is shown only: the reservation is the CUDA
    /// arena's limit, fixed when the engine loaded.
    pub(super) fn measured(&mut self, index: usize, mb: u64) {
        let mb = mb.max(self.file_mb);
        let configured = self.memory_configured;
        let Some(slot) = self.replicas.iter_mut().find(|r| r.id == index) else {
            return;
        };
        slot.measured_mb = Some(mb);
        let Some(reservation) = slot.reservation.as_mut() else {
            return;
        };
        if configured || !reservation.is_granted() || reservation.device() != Some(Device::Cpu) {
            return;
        }
        self.state.learn_footprint(self.file_mb, mb);
        self.footprint_mb = self.state.measured_mb().unwrap_or(mb);
        self.settle_reservation(index, mb);
    }

    /// Replica `index`, loaded on the CPU, holds `mb` from now on: its
    /// reservation becomes that (the load's headroom given back), unless
    /// `memory_mb` sets it.
    pub(super) fn settle_reservation(&mut self, index: usize, mb: u64) {
        let budget = self.budget.clone();
        let configured = self.memory_configured;
        let Some(slot) = self.replicas.iter_mut().find(|r| r.id == index) else {
            return;
        };
        let Some(reservation) = slot.reservation.as_mut() else {
            return;
        };
        if configured || !reservation.is_granted() || reservation.device() != Some(Device::Cpu) {
            return;
        }
        let Some(budget) = budget else {
            return;
        };
        if reservation.mb() == mb {
            return;
        }
        info!(
            replica = %reservation.owner(),
            estimated_mb = reservation.mb(),
            measured_mb = mb,
            "reservation corrected to the measured footprint"
        );
        reservation.resized(mb);
        budget.do_send(Resize {
            owner: reservation.owner().to_string(),
            mb,
        });
    }
}
