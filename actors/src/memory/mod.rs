//! The memory budget: how much memory replicas may reserve on each
//! device. Each GPU's total is its memory from NVML x `memory.gpu_fraction`;
//! the CPU's is `memory.limit_mb`, else the container's cgroup limit, else
//! RAM (see [`totals`]). CPU threads are not budgeted: every session draws
//! on ONNX Runtime's one shared pool, so no replica is refused for threads.
//!
//! A replica asks with its model's [`Placement`]: the budget chooses the
//! device (the allowed GPU with the most free memory, so replicas spread
//! over GPUs) and reserves its footprint there. One that does not fit is
//! not started, and is told
//! when room is given back so it can ask again; one that asks for a GPU
//! where none is usable is refused with the reason.
//!
//! A grant is a [`Reservation`] value: dropping it gives the reservation
//! back, so reservations come back however their holder goes away.

mod earmarks;
mod ledger;
pub mod process_growth;
mod reservation;
mod snapshot;
pub mod totals;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult, Recipient};
use tracing::{info, warn};

use crate::device::{self, Device, DeviceSetup, GpuInfo, Placement};
pub use ledger::{Earmark, GetLedger, Ledger, LedgerDevice};
pub use reservation::Reservation;
pub use snapshot::{DeviceSnapshot, GetMemorySnapshot, MemorySnapshot};
pub use totals::MemorySource;

/// How the budget's totals are chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    /// Explicit CPU total; `None` means the cgroup limit or RAM (75%).
    pub limit_mb: Option<u64>,
    /// Share of each GPU's memory replicas may reserve.
    pub gpu_fraction: f64,
}

/// A replica that did not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub owner: String,
    pub required_mb: u64,
    pub free_mb: u64,
    /// Why, in words: which resource ran out, or which device is missing.
    pub reason: String,
    /// It can never fit: more than any allowed device's whole total, or
    /// no allowed device at all. Waiting for room would not help.
    pub permanent: bool,
}

/// One device's total and its free MB, published for batchers.
struct DeviceBudget {
    name: Option<String>,
    source: MemorySource,
    total_mb: u64,
    free_shared: Arc<AtomicU64>,
}

/// What one owner holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    device: Device,
    mb: u64,
}

/// The free MB of every device, kept current by the budget; batchers read
/// it to cap batches at what the device their replica runs on holds.
#[derive(Debug, Clone, Default)]
pub struct FreeMemory(Arc<BTreeMap<Device, Arc<AtomicU64>>>);

impl FreeMemory {
    /// Free MB on `device`; `None` for a device the budget does not have.
    pub fn free_mb(&self, device: Device) -> Option<u64> {
        self.0.get(&device).map(|free| free.load(Ordering::Relaxed))
    }
}

/// The memory budget actor.
pub struct MemoryBudget {
    devices: BTreeMap<Device, DeviceBudget>,
    setup: DeviceSetup,
    /// The GPUs visible when the budget started, or why none are.
    visible: Result<Vec<GpuInfo>, String>,
    reservations: BTreeMap<String, Held>,
    refused: Vec<Refusal>,
    /// Refused owners to tell when room is given back.
    waiting: BTreeMap<String, Recipient<BudgetFreed>>,
    /// Room promised to models the arbiter made it for.
    earmarks: earmarks::Earmarks,
    free: FreeMemory,
    /// The process's growth, shown for the CPU when its engines draw on
    /// the process's own memory ([`MemoryBudget::showing_process_growth`]).
    growth: Option<process_growth::ProcessGrowth>,
}

impl MemoryBudget {
    /// A budget for the CPU and every usable GPU of `setup`.
    pub fn from_config(config: &MemoryConfig, setup: DeviceSetup) -> Self {
        let (source, cpu_mb) = totals::cpu_total_mb(config.limit_mb);
        info!(
            device = "cpu",
            source = source.as_str(),
            total_mb = cpu_mb,
            "memory budget"
        );
        let mut budget = MemoryBudget::new(source, cpu_mb, setup);
        budget.add_usable_gpus(config.gpu_fraction);
        budget
    }

    /// A CPU-only budget of `total_mb`.
    pub fn with_total(source: MemorySource, total_mb: u64) -> Self {
        MemoryBudget::new(source, total_mb, DeviceSetup::cpu_only())
    }

    /// A budget of `cpu_mb` for the CPU and, when `setup`'s support is
    /// `Ok`, each of its GPUs at its whole total: for tests of placement
    /// with a fixed inventory.
    pub fn with_gpus(cpu_mb: u64, setup: DeviceSetup) -> Self {
        let mut budget = MemoryBudget::new(MemorySource::Config, cpu_mb, setup);
        budget.add_usable_gpus(1.0);
        budget
    }

    /// Adds a budget of `fraction` of each visible GPU's memory, when the
    /// engine can use GPUs; otherwise says once why no GPU is used (models
    /// with device = "auto" then run on the CPU).
    fn add_usable_gpus(&mut self, fraction: f64) {
        self.visible = self.setup.inventory.gpus();
        let gpus = match (&self.visible, &self.setup.support) {
            (Ok(found), Ok(())) => found.clone(),
            (Err(why), _) | (Ok(_), Err(why)) => {
                info!(reason = %why, "no GPU is used");
                return;
            }
        };
        for gpu in gpus {
            let total_mb = (gpu.total_mb as f64 * fraction) as u64;
            info!(device = %Device::Gpu(gpu.index), name = %gpu.name, total_mb, "memory budget");
            self.add_device(
                Device::Gpu(gpu.index),
                Some(gpu.name),
                MemorySource::Nvml,
                total_mb,
            );
        }
    }

    fn new(source: MemorySource, cpu_mb: u64, setup: DeviceSetup) -> Self {
        let mut budget = MemoryBudget {
            devices: BTreeMap::new(),
            setup,
            visible: Err("no GPU inventory".into()),
            reservations: BTreeMap::new(),
            refused: Vec::new(),
            waiting: BTreeMap::new(),
            earmarks: earmarks::Earmarks::default(),
            free: FreeMemory::default(),
            growth: None,
        };
        budget.add_device(Device::Cpu, None, source, cpu_mb);
        budget
    }

    fn add_device(
        &mut self,
        device: Device,
        name: Option<String>,
        source: MemorySource,
        total_mb: u64,
    ) {
        let free_shared = Arc::new(AtomicU64::new(total_mb));
        self.devices.insert(
            device,
            DeviceBudget {
                name,
                source,
                total_mb,
                free_shared: free_shared.clone(),
            },
        );
        let mut shared: BTreeMap<Device, Arc<AtomicU64>> = (*self.free.0).clone();
        shared.insert(device, free_shared);
        self.free = FreeMemory(Arc::new(shared));
    }

    /// Shows the process's growth since now (before any replica loads)
    /// beside the CPU's reservations (see [`process_growth`]): for engines
    /// whose CPU memory is the process's. Unchanged where `read` cannot
    /// read the process.
    pub fn showing_process_growth(mut self, read: process_growth::ResidentReader) -> Self {
        self.growth = process_growth::ProcessGrowth::from_now(read);
        self
    }

    /// The free MB of every device, kept current as reservations come and go.
    pub fn free_memory(&self) -> FreeMemory {
        self.free.clone()
    }

    fn publish_free(&self) {
        for (device, budget) in &self.devices {
            budget
                .free_shared
                .store(self.free_for(*device, None), Ordering::Relaxed);
        }
    }

    fn reserved_mb(&self, device: Device) -> u64 {
        self.reservations
            .values()
            .filter(|held| held.device == device)
            .map(|held| held.mb)
            .sum()
    }

    fn free_mb(&self, device: Device) -> u64 {
        let total = self.devices.get(&device).map_or(0, |d| d.total_mb);
        total.saturating_sub(self.reserved_mb(device))
    }

    /// What `model` may take on `device`: the free MB less what is
    /// promised to other models (to any model when `None`).
    fn free_for(&self, device: Device, model: Option<&str>) -> u64 {
        let promised = self.earmarks.held_for_others(device, model);
        self.free_mb(device).saturating_sub(promised)
    }

    /// Tells every refused owner that room was given back; each asks again
    /// (and waits again if it still does not fit).
    fn wake_waiters(&mut self) {
        for (owner, waiter) in std::mem::take(&mut self.waiting) {
            waiter.do_send(BudgetFreed { owner });
        }
    }

    /// What a claim of `mb` (plus `headroom_mb` while it loads, on the CPU
    /// only) holds on one of `devices`: cut to the largest device's total
    /// unless `configured` (model.toml's `memory_mb`), since an estimate or
    /// a measurement may be off and the model can still load alone.
    fn to_hold(&self, devices: &[Device], mb: u64, headroom_mb: u64, configured: bool) -> u64 {
        let mut mb = mb;
        if devices.iter().all(|d| *d == Device::Cpu) {
            mb += headroom_mb;
        }
        match configured {
            true => mb,
            false => mb.min(self.largest_total(devices).unwrap_or(mb)),
        }
    }

    /// The largest total among `devices`; `None` when the budget has none
    /// of them.
    fn largest_total(&self, devices: &[Device]) -> Option<u64> {
        devices
            .iter()
            .filter_map(|d| self.devices.get(d).map(|b| b.total_mb))
            .max()
    }

    /// The device for `mb` among `candidates`: the one the owner already
    /// holds memory on if it still fits there, else the one with the most
    /// free memory (ties: the lowest index). `Err` is the most free MB any
    /// candidate has.
    fn choose(
        &self,
        candidates: &[Device],
        mb: u64,
        had: Option<Held>,
        model: &str,
    ) -> Result<Device, u64> {
        let free = |device: Device| {
            let back = had.filter(|h| h.device == device).map_or(0, |h| h.mb);
            self.free_for(device, Some(model)) + back
        };
        if let Some(held) = had.filter(|h| candidates.contains(&h.device)) {
            if mb <= free(held.device) {
                return Ok(held.device);
            }
        }
        let best = candidates
            .iter()
            .copied()
            .filter(|d| self.devices.contains_key(d))
            .max_by_key(|&d| (free(d), std::cmp::Reverse(d)));
        match best {
            Some(device) if mb <= free(device) => Ok(device),
            Some(device) => Err(free(device)),
            None => Err(0),
        }
    }
}

impl Actor for MemoryBudget {
    type Context = Context<Self>;
}

/// Reserve `mb` for `owner` (for example `unet-seg/0`) on a device its
/// model's `placement` allows.
#[derive(Message)]
#[rtype(result = "Reservation")]
pub struct Reserve {
    pub owner: String,
    pub mb: u64,
    pub placement: Placement,
    /// Told with [`BudgetFreed`] once room is given back, when this request
    /// is refused, so that it can ask again instead of staying refused.
    pub waiter: Option<Recipient<BudgetFreed>>,
    /// `mb` is model.toml's `memory_mb`. Otherwise it is an estimate or a
    /// measurement, either of which may be off: one larger than every
    /// allowed device's total is cut to the largest total rather than
    /// refused for good, so the model can still load alone.
    pub configured: bool,
    /// Added to `mb` when the replica goes on the CPU: what its load holds
    /// for a while beyond its footprint (the holder gives it back with a
    /// [`Resize`] once loaded). Not on a GPU: the file's bytes stay in
    /// host memory.
    pub headroom_mb: u64,
}

/// Budget -> whoever was refused: a reservation was given back since `owner`
/// was refused; ask again. Sent once per refusal.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BudgetFreed {
    pub owner: String,
}

impl Handler<Reserve> for MemoryBudget {
    type Result = MessageResult<Reserve>;

    fn handle(&mut self, mut msg: Reserve, ctx: &mut Self::Context) -> Self::Result {
        let had = self.reservations.get(&msg.owner).copied();
        let candidates = device::candidates(&msg.placement, &self.visible, &self.setup.support);
        if let Ok(devices) = &candidates {
            msg.mb = self.to_hold(devices, msg.mb, msg.headroom_mb, msg.configured);
        }
        let mut waiter = msg.waiter;
        let owner = msg.owner.clone();
        let model = earmarks::model_of(&owner);
        let chosen = match candidates {
            // Waiting for room would not help: the device is missing.
            Err(why) => {
                waiter = None;
                Err((0, why, true))
            }
            Ok(candidates) => self
                .choose(&candidates, msg.mb, had, model)
                .map_err(|free| {
                    let largest = self.largest_total(&candidates).unwrap_or(0);
                    if msg.mb > largest {
                        let reason = format!(
                            "needs {} MB of memory, more than the budget's whole {largest} MB",
                            msg.mb
                        );
                        return (free, reason, true);
                    }
                    let on = match candidates.as_slice() {
                        [one] => format!("{one}"),
                        many => {
                            let names: Vec<String> = many.iter().map(Device::to_string).collect();
                            format!("the most free on any of {}", names.join(", "))
                        }
                    };
                    (
                        free,
                        format!(
                            "needs {} MB of memory, the budget has {free} MB free ({on})",
                            msg.mb
                        ),
                        false,
                    )
                }),
        };
        let budget = Some(ctx.address());
        let device = match chosen {
            Ok(device) => device,
            Err((free_mb, reason, permanent)) => {
                if permanent {
                    waiter = None;
                }
                let refusal = Refusal {
                    owner: msg.owner.clone(),
                    required_mb: msg.mb,
                    free_mb,
                    reason,
                    permanent,
                };
                warn!(
                    replica = %refusal.owner,
                    reason = %refusal.reason,
                    "replica does not fit in the memory budget; not started"
                );
                self.refused.retain(|r| r.owner != refusal.owner);
                self.refused.push(refusal.clone());
                match waiter {
                    Some(waiter) => self.waiting.insert(msg.owner.clone(), waiter),
                    None => self.waiting.remove(&msg.owner),
                };
                return MessageResult(Reservation {
                    owner: msg.owner,
                    device: None,
                    mb: 0,
                    refusal: Some(refusal),
                    budget,
                });
            }
        };
        self.refused.retain(|r| r.owner != msg.owner);
        self.waiting.remove(&msg.owner);
        self.earmarks.consume(model);
        let held = Held { device, mb: msg.mb };
        self.reservations.insert(msg.owner.clone(), held);
        self.publish_free();
        let gave_back = had.is_some_and(|h| h.device != device || h.mb > msg.mb);
        if gave_back {
            self.wake_waiters();
        }
        MessageResult(Reservation {
            owner: msg.owner,
            device: Some(device),
            mb: msg.mb,
            refusal: None,
            budget,
        })
    }
}

/// `owner`'s reservation, measured, holds `mb` from now on: less gives
/// memory back (and wakes refused owners), more holds what the replica
/// really uses even where that passes the total (free memory is then 0).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resize {
    pub owner: String,
    pub mb: u64,
}

impl Handler<Resize> for MemoryBudget {
    type Result = ();

    fn handle(&mut self, msg: Resize, _ctx: &mut Self::Context) {
        let Some(held) = self.reservations.get_mut(&msg.owner) else {
            return;
        };
        let shrunk = msg.mb < held.mb;
        held.mb = msg.mb;
        self.publish_free();
        if shrunk {
            self.wake_waiters();
        }
    }
}

/// Give back what `owner` reserved, and forget its refusal if it was
/// refused. [`Reservation`] sends it when dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub owner: String,
}

impl Handler<Release> for MemoryBudget {
    type Result = ();

    fn handle(&mut self, msg: Release, _ctx: &mut Self::Context) {
        let freed = self.reservations.remove(&msg.owner).is_some();
        self.refused.retain(|r| r.owner != msg.owner);
        self.waiting.remove(&msg.owner);
        self.publish_free();
        if freed {
            self.wake_waiters();
        }
    }
}

/// Asks for the shared free MB of every device (see
/// [`MemoryBudget::free_memory`]); a batcher asks once, when it starts.
#[derive(Message)]
#[rtype(result = "FreeMemory")]
pub struct ShareFreeMemory;

impl Handler<ShareFreeMemory> for MemoryBudget {
    type Result = MessageResult<ShareFreeMemory>;

    fn handle(&mut self, _: ShareFreeMemory, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.free_memory())
    }
}

#[cfg(test)]
mod tests;
