//! The budget's state for stats ([`GetMemorySnapshot`]): each device's
//! total, what is reserved and free, and what the process has grown by
//! beside it.

use std::collections::BTreeMap;

use actix::{Handler, Message, MessageResult};

use super::{MemoryBudget, MemorySource, Refusal};
use crate::device::Device;

/// One device's budget, for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSnapshot {
    pub device: Device,
    /// The GPU's name (NVML); `None` for the CPU.
    pub name: Option<String>,
    pub source: MemorySource,
    pub total_mb: u64,
    pub reserved_mb: u64,
    pub free_mb: u64,
    /// The CPU, where engines draw on the process's memory: MB the
    /// process's resident memory has grown by since the budget started.
    pub process_growth_mb: Option<u64>,
    /// Memory in use now (NVML), for GPUs.
    pub used_mb: Option<u64>,
    pub utilization_percent: Option<u32>,
}

/// The budget's state, for stats. The top-level memory figures are the
/// CPU's; `devices` has every device's, the CPU first.
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySnapshot {
    pub source: MemorySource,
    pub total_mb: u64,
    pub reserved_mb: u64,
    pub free_mb: u64,
    pub devices: Vec<DeviceSnapshot>,
    /// MB per owner, whatever the device.
    pub reservations: BTreeMap<String, u64>,
    pub refused: Vec<Refusal>,
}

/// Asks for the budget's state.
#[derive(Message)]
#[rtype(result = "MemorySnapshot")]
pub struct GetMemorySnapshot;

impl Handler<GetMemorySnapshot> for MemoryBudget {
    type Result = MessageResult<GetMemorySnapshot>;

    fn handle(&mut self, _: GetMemorySnapshot, _ctx: &mut Self::Context) -> Self::Result {
        let devices: Vec<DeviceSnapshot> = self
            .devices
            .iter()
            .map(|(&device, budget)| {
                let usage = match device {
                    Device::Gpu(index) => self.setup.inventory.usage(index),
                    Device::Cpu => None,
                };
                DeviceSnapshot {
                    device,
                    name: budget.name.clone(),
                    source: budget.source,
                    total_mb: budget.total_mb,
                    reserved_mb: self.reserved_mb(device),
                    free_mb: self.free_mb(device),
                    process_growth_mb: self
                        .growth
                        .as_ref()
                        .filter(|_| device == Device::Cpu)
                        .map(|g| g.grown_mb()),
                    used_mb: usage.map(|u| u.used_mb),
                    utilization_percent: usage.map(|u| u.utilization_percent),
                }
            })
            .collect();
        let cpu = &devices[0];
        MessageResult(MemorySnapshot {
            source: cpu.source,
            total_mb: cpu.total_mb,
            reserved_mb: cpu.reserved_mb,
            free_mb: cpu.free_mb,
            reservations: self
                .reservations
                .iter()
                .map(|(owner, held)| (owner.clone(), held.mb))
                .collect(),
            refused: self.refused.clone(),
            devices,
        })
    }
}
