//! Devices replicas run on: the CPU, or GPU `n` through ONNX Runtime's CUDA
//! provider. A model's `device` (`auto`, `cpu`, `gpu`) and `gpus` say where
//! its replicas may go; the GPUs there are come from a [`GpuInventory`]
//! (NVML on a real machine, a fixed list in tests), and whether the engine
//! can use them at all from the engine provider ([`GpuSupport`]).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Where one replica runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Device {
    Cpu,
    /// The CUDA device with this index (as NVML and CUDA number them).
    Gpu(u32),
}

impl Device {
    pub fn is_gpu(self) -> bool {
        matches!(self, Device::Gpu(_))
    }
}

impl fmt::Display for Device {
    /// `cpu`, `gpu:0`, `gpu:1`, ...: the name stats and metrics use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Gpu(index) => write!(f, "gpu:{index}"),
        }
    }
}

/// `model.toml`'s `device`: where the model's replicas should run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePreference {
    /// A GPU when one is usable (a GPU is visible and the engine can run on
    /// it), else the CPU.
    #[default]
    Auto,
    Cpu,
    /// A GPU or nothing: without one the model is not ready, with a reason.
    Gpu,
}

impl DevicePreference {
    pub fn as_str(self) -> &'static str {
        match self {
            DevicePreference::Auto => "auto",
            DevicePreference::Cpu => "cpu",
            DevicePreference::Gpu => "gpu",
        }
    }
}

/// Where a model's replicas may be placed: its `device` and `gpus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub preference: DevicePreference,
    /// The GPU indices its replicas may use; `None` means every visible one.
    pub gpus: Option<Vec<u32>>,
}

impl Placement {
    pub fn cpu() -> Placement {
        Placement {
            preference: DevicePreference::Cpu,
            gpus: None,
        }
    }
}

/// One visible GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub total_mb: u64,
}

/// A GPU's use right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuUsage {
    pub used_mb: u64,
    pub utilization_percent: u32,
}

/// The GPUs of this machine.
pub trait GpuInventory: Send + Sync {
    /// Every visible GPU, or why none can be seen (no driver, no NVML).
    fn gpus(&self) -> Result<Vec<GpuInfo>, String>;
    /// Memory used and utilisation of GPU `index` now, when known.
    fn usage(&self, index: u32) -> Option<GpuUsage>;
}

/// Whether the engine can run a replica on a GPU at all: `Err` names what
/// is missing (for example an ONNX Runtime build without the CUDA provider).
pub type GpuSupport = Result<(), String>;

/// The GPUs NVML reports. NVML is opened once; without a driver (or without
/// `libnvidia-ml.so`) every call reports the reason.
pub struct NvmlInventory {
    nvml: Result<nvml_wrapper::Nvml, String>,
}

impl NvmlInventory {
    pub fn open() -> NvmlInventory {
        NvmlInventory {
            nvml: nvml_wrapper::Nvml::init()
                .map_err(|e| format!("NVML is not usable (no NVIDIA driver?): {e}")),
        }
    }
}

impl GpuInventory for NvmlInventory {
    fn gpus(&self) -> Result<Vec<GpuInfo>, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML cannot count GPUs: {e}"))?;
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let device = nvml
                .device_by_index(index)
                .map_err(|e| format!("NVML cannot open GPU {index}: {e}"))?;
            let memory = device
                .memory_info()
                .map_err(|e| format!("NVML cannot read GPU {index}'s memory: {e}"))?;
            gpus.push(GpuInfo {
                index,
                name: device.name().unwrap_or_else(|_| "unknown".into()),
                total_mb: memory.total / MIB,
            });
        }
        if gpus.is_empty() {
            return Err("NVML sees no GPU".into());
        }
        Ok(gpus)
    }

    fn usage(&self, index: u32) -> Option<GpuUsage> {
        let device = self.nvml.as_ref().ok()?.device_by_index(index).ok()?;
        let used_mb = device.memory_info().ok()?.used / MIB;
        let utilization_percent = device.utilization_rates().map_or(0, |u| u.gpu);
        Some(GpuUsage {
            used_mb,
            utilization_percent,
        })
    }
}

const MIB: u64 = 1024 * 1024;

/// A fixed list of GPUs, with fixed use: for tests of placement and
/// budgets on machines without one, and for a machine told it has none.
pub struct FixedInventory {
    gpus: Result<Vec<GpuInfo>, String>,
}

impl FixedInventory {
    /// GPUs of `total_mb` each, numbered from 0.
    pub fn with_gpus(totals_mb: &[u64]) -> FixedInventory {
        FixedInventory {
            gpus: Ok(totals_mb
                .iter()
                .enumerate()
                .map(|(index, &total_mb)| GpuInfo {
                    index: index as u32,
                    name: format!("test GPU {index}"),
                    total_mb,
                })
                .collect()),
        }
    }

    /// No GPU, for `reason`.
    pub fn none(reason: &str) -> FixedInventory {
        FixedInventory {
            gpus: Err(reason.to_string()),
        }
    }
}

impl GpuInventory for FixedInventory {
    fn gpus(&self) -> Result<Vec<GpuInfo>, String> {
        self.gpus.clone()
    }

    fn usage(&self, _index: u32) -> Option<GpuUsage> {
        None
    }
}

/// The devices a model's replicas may be placed on, given what is visible
/// and usable: the CPU alone, a non-empty list of GPUs, or why the model
/// cannot run where it asks to.
pub fn candidates(
    placement: &Placement,
    visible: &Result<Vec<GpuInfo>, String>,
    support: &GpuSupport,
) -> Result<Vec<Device>, String> {
    let usable = match (visible, support) {
        (Ok(gpus), Ok(())) if !gpus.is_empty() => Ok(gpus),
        (Ok(_), Ok(())) => Err("no GPU is visible".to_string()),
        (Err(why), _) => Err(why.clone()),
        (Ok(_), Err(why)) => Err(why.clone()),
    };
    match (placement.preference, usable) {
        (DevicePreference::Cpu, _) | (DevicePreference::Auto, Err(_)) => Ok(vec![Device::Cpu]),
        (DevicePreference::Gpu, Err(why)) => {
            Err(format!("device = \"gpu\" but no GPU is usable: {why}"))
        }
        (preference, Ok(gpus)) => {
            let allowed: Vec<Device> = gpus
                .iter()
                .filter(|g| placement.gpus.as_ref().is_none_or(|a| a.contains(&g.index)))
                .map(|g| Device::Gpu(g.index))
                .collect();
            if allowed.is_empty() {
                let visible: Vec<String> = gpus.iter().map(|g| g.index.to_string()).collect();
                return Err(format!(
                    "device = \"{}\" and gpus = {:?}, but the visible GPUs are {}",
                    preference.as_str(),
                    placement.gpus.clone().unwrap_or_default(),
                    visible.join(", ")
                ));
            }
            Ok(allowed)
        }
    }
}

/// The inventory and engine support a budget places replicas with.
#[derive(Clone)]
pub struct DeviceSetup {
    pub inventory: Arc<dyn GpuInventory>,
    pub support: GpuSupport,
}

impl DeviceSetup {
    /// No GPU at all: every model runs on the CPU.
    pub fn cpu_only() -> DeviceSetup {
        DeviceSetup {
            inventory: Arc::new(FixedInventory::none("no GPU inventory configured")),
            support: Err("GPUs are not used".into()),
        }
    }
}

impl fmt::Debug for DeviceSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSetup")
            .field("gpus", &self.inventory.gpus())
            .field("support", &self.support)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(preference: DevicePreference, gpus: Option<Vec<u32>>) -> Placement {
        Placement { preference, gpus }
    }

    #[test]
    fn auto_takes_the_gpus_when_usable_and_the_cpu_otherwise() {
        let two = FixedInventory::with_gpus(&[1000, 1000]).gpus();
        let auto = placement(DevicePreference::Auto, None);
        assert_eq!(
            candidates(&auto, &two, &Ok(())),
            Ok(vec![Device::Gpu(0), Device::Gpu(1)])
        );
        let no_provider = Err("the CUDA provider is missing".to_string());
        assert_eq!(candidates(&auto, &two, &no_provider), Ok(vec![Device::Cpu]));
        let none = FixedInventory::none("no driver").gpus();
        assert_eq!(candidates(&auto, &none, &Ok(())), Ok(vec![Device::Cpu]));
        let cpu = placement(DevicePreference::Cpu, None);
        assert_eq!(candidates(&cpu, &two, &Ok(())), Ok(vec![Device::Cpu]));
    }

    #[test]
    fn gpu_names_what_is_missing() {
        let gpu = placement(DevicePreference::Gpu, None);
        let none = FixedInventory::none("NVML is not usable").gpus();
        let why = candidates(&gpu, &none, &Ok(())).unwrap_err();
        assert!(
            why.contains("no GPU is usable: NVML is not usable"),
            "{why}"
        );
        let two = FixedInventory::with_gpus(&[1000, 1000]).gpus();
        let why = candidates(&gpu, &two, &Err("no CUDA provider library".into())).unwrap_err();
        assert!(why.contains("no CUDA provider library"), "{why}");
    }

    #[test]
    fn gpus_limits_the_devices_and_names_invisible_ones() {
        let two = FixedInventory::with_gpus(&[1000, 1000]).gpus();
        let second = placement(DevicePreference::Gpu, Some(vec![1]));
        assert_eq!(candidates(&second, &two, &Ok(())), Ok(vec![Device::Gpu(1)]));
        let missing = placement(DevicePreference::Auto, Some(vec![3]));
        let why = candidates(&missing, &two, &Ok(())).unwrap_err();
        assert!(why.contains("gpus = [3]") && why.contains("0, 1"), "{why}");
    }

    #[test]
    fn devices_are_named_as_stats_show_them() {
        assert_eq!(Device::Cpu.to_string(), "cpu");
        assert_eq!(Device::Gpu(1).to_string(), "gpu:1");
    }
}
