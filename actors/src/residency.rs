//! Which replicas leave memory when a model must load and the budget is
//! full: Greedy-Dual-Size-Frequency (Cherkasova, 1998) with a decaying
//! frequency. Each resident replica has a priority
//!
//! ```text
//! H = frequency x cost / size
//! ```
//!
//! where frequency is its model's demand (requests, each counting half
//! after [`crate::usage::DEMAND_HALF_LIFE`]; shared by its replicas), cost
//! is how long a load and warmup of it took (ms), and size is what it
//! reserves (MB): H is the load time per MB that evicting it would cost,
//! per unit of time. Replicas with the lowest H go first: rarely used,
//! quick to load again, large. GDSF ages with a clock L added at each
//! access (the last victim's H); with frequencies counted since a model
//! loaded, a model that took thousands of requests before its popularity
//! moved on outranks today's favourites until thousands of evictions have
//! raised L. A decaying frequency ages by time instead: a model popular
//! a minute ago but rare now ranks with the rare ones within seconds.
//! Who may go at all (not pinned, nothing queued or running, resident
//! long enough) is the caller's to decide; this module only ranks and sums.

use crate::device::Device;
use crate::memory::Ledger;

/// A replica that may be evicted.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its name in the budget, `model/id`.
    pub owner: String,
    pub model: String,
    pub id: usize,
    pub device: Device,
    pub mb: u64,
    /// Its GDSF priority (see [`priority`]).
    pub priority: f64,
}

/// The priority of one of `replicas` replicas of a model whose demand is
/// `demand` (decayed requests), that loads in `load_ms` and reserves `mb`.
pub fn priority(demand: f64, replicas: usize, load_ms: u64, mb: u64) -> f64 {
    let frequency = demand.max(0.0) / replicas.max(1) as f64;
    frequency * load_ms.max(1) as f64 / mb.max(1) as f64
}

/// Where room for `mb` comes from: the device, and the replicas to evict
/// there (none when it already has room).
#[derive(Debug, Clone, PartialEq)]
pub struct Room {
    pub device: Device,
    pub victims: Vec<Candidate>,
}

/// Room for `mb` on one of the ledger's devices, counting `pending` MB per
/// device as free already (replicas asked to leave that still hold their
/// reservation). A device with room wins outright (the most free); else the
/// device whose victims have the lowest summed priority, each device's
/// victims taken lowest priority first until enough is free. `Err` is the
/// most MB any device could offer.
pub fn make_room(
    ledger: &Ledger,
    pending: &dyn Fn(Device) -> u64,
    mb: u64,
    candidates: &[Candidate],
) -> Result<Room, u64> {
    let free = |device: Device, free_mb: u64| free_mb + pending(device);
    let roomiest = ledger
        .devices
        .iter()
        .filter(|d| free(d.device, d.free_mb) >= mb)
        .max_by_key(|d| free(d.device, d.free_mb));
    if let Some(device) = roomiest {
        return Ok(Room {
            device: device.device,
            victims: Vec::new(),
        });
    }
    let mut best: Option<(f64, Room)> = None;
    let mut most = 0;
    for device in &ledger.devices {
        let mut on_device: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.device == device.device)
            .collect();
        on_device.sort_by(|a, b| a.priority.total_cmp(&b.priority));
        let mut freed = free(device.device, device.free_mb);
        let mut victims = Vec::new();
        let mut cost = 0.0;
        for candidate in on_device {
            if freed >= mb {
                break;
            }
            freed += candidate.mb;
            cost += candidate.priority;
            victims.push(candidate.clone());
        }
        most = most.max(freed);
        if freed < mb {
            continue;
        }
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            let room = Room {
                device: device.device,
                victims,
            };
            best = Some((cost, room));
        }
    }
    best.map(|(_, room)| room).ok_or(most)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::LedgerDevice;

    fn ledger(devices: &[(Device, u64)]) -> Ledger {
        Ledger {
            devices: devices
                .iter()
                .map(|&(device, free_mb)| LedgerDevice {
                    device,
                    total_mb: 1000,
                    free_mb,
                })
                .collect(),
            held: Default::default(),
            needs_mb: 0,
        }
    }

    fn candidate(model: &str, device: Device, mb: u64, priority: f64) -> Candidate {
        Candidate {
            owner: format!("{model}/0"),
            model: model.into(),
            id: 0,
            device,
            mb,
            priority,
        }
    }

    const NONE: &dyn Fn(Device) -> u64 = &|_| 0;

    #[test]
    fn often_used_slow_to_load_and_small_ranks_highest() {
        let base = priority(10.0, 1, 1000, 100);
        assert!(priority(20.0, 1, 1000, 100) > base, "more requests");
        assert!(priority(10.0, 1, 2000, 100) > base, "slower to load");
        assert!(priority(10.0, 1, 1000, 50) > base, "smaller");
        // Two replicas share the model's requests: each is worth half.
        assert_eq!(priority(10.0, 2, 1000, 100), priority(5.0, 1, 1000, 100));
        // A model never asked for is worth nothing.
        assert_eq!(priority(0.0, 1, 1000, 100), 0.0);
    }

    #[test]
    fn no_eviction_when_a_device_has_room() {
        let ledger = ledger(&[(Device::Cpu, 300)]);
        let others = [candidate("a", Device::Cpu, 500, 1.0)];
        let room = make_room(&ledger, NONE, 200, &others).expect("room");
        assert_eq!(room.victims, vec![]);
    }

    #[test]
    fn the_lowest_priorities_go_until_enough_is_free() {
        let ledger = ledger(&[(Device::Cpu, 50)]);
        let others = [
            candidate("hot", Device::Cpu, 100, 9.0),
            candidate("cold", Device::Cpu, 100, 1.0),
            candidate("warm", Device::Cpu, 100, 5.0),
        ];
        let room = make_room(&ledger, NONE, 220, &others).expect("room");
        let names: Vec<&str> = room.victims.iter().map(|v| v.model.as_str()).collect();
        assert_eq!(names, ["cold", "warm"]);
    }

    #[test]
    fn replicas_already_leaving_count_as_room() {
        let ledger = ledger(&[(Device::Cpu, 50)]);
        let others = [candidate("a", Device::Cpu, 100, 1.0)];
        let leaving = |_| 200;
        let room = make_room(&ledger, &leaving, 220, &others).expect("room");
        assert_eq!(room.victims, vec![]);
    }

    #[test]
    fn not_enough_to_free_evicts_nothing_and_says_how_much_could_be() {
        let ledger = ledger(&[(Device::Cpu, 50)]);
        let others = [candidate("a", Device::Cpu, 100, 1.0)];
        assert_eq!(make_room(&ledger, NONE, 500, &others), Err(150));
    }

    #[test]
    fn the_device_that_costs_least_to_clear_is_chosen() {
        let ledger = ledger(&[(Device::Gpu(0), 0), (Device::Gpu(1), 0)]);
        let others = [
            candidate("busy-favourite", Device::Gpu(0), 200, 50.0),
            candidate("rare", Device::Gpu(1), 200, 2.0),
        ];
        let room = make_room(&ledger, NONE, 150, &others).expect("room");
        assert_eq!(room.device, Device::Gpu(1));
        assert_eq!(room.victims[0].model, "rare");
    }
}
