//! Each device's memory budget in Prometheus: totals, reservations, free
//! memory, the process's growth (CPU) and NVML's readings (GPUs).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use gantry_actors::memory::DeviceSnapshot;

use super::prometheus::MB;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

/// Each device's budget (the CPU and every GPU used) and, for GPUs, what
/// NVML says is in use, with a `device` label (`cpu`, `gpu:0`, ...).
pub(super) fn register(r: &mut Registry, devices: &[DeviceSnapshot]) {
    let total = Family::<DeviceLabels, Gauge>::default();
    let reserved = Family::<DeviceLabels, Gauge>::default();
    let free = Family::<DeviceLabels, Gauge>::default();
    let used = Family::<DeviceLabels, Gauge>::default();
    let utilization = Family::<DeviceLabels, Gauge>::default();
    let growth = Family::<DeviceLabels, Gauge>::default();
    for d in devices {
        let labels = DeviceLabels {
            device: d.device.to_string(),
        };
        total.get_or_create(&labels).set(d.total_mb as i64 * MB);
        reserved
            .get_or_create(&labels)
            .set(d.reserved_mb as i64 * MB);
        free.get_or_create(&labels).set(d.free_mb as i64 * MB);
        if let Some(mb) = d.process_growth_mb {
            growth.get_or_create(&labels).set(mb as i64 * MB);
        }
        if let Some(mb) = d.used_mb {
            used.get_or_create(&labels).set(mb as i64 * MB);
        }
        if let Some(percent) = d.utilization_percent {
            utilization.get_or_create(&labels).set(i64::from(percent));
        }
    }
    r.register_with_unit(
        "memory_budget_total",
        "Memory the replicas may reserve in all, per device",
        Unit::Bytes,
        total,
    );
    r.register_with_unit(
        "memory_budget_reserved",
        "Memory reserved by replicas, per device",
        Unit::Bytes,
        reserved,
    );
    r.register_with_unit(
        "memory_budget_free",
        "Memory of the budget not reserved, per device",
        Unit::Bytes,
        free,
    );
    r.register_with_unit(
        "memory_process_growth",
        "How much the process's resident memory has grown since the budget started (CPU)",
        Unit::Bytes,
        growth,
    );
    r.register_with_unit(
        "gpu_memory_used",
        "GPU memory in use by any process (NVML)",
        Unit::Bytes,
        used,
    );
    r.register(
        "gpu_utilization_percent",
        "Share of time a GPU kernel ran over the last sample period (NVML)",
        utilization,
    );
}
