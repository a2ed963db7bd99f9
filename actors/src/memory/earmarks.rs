//! Room promised to one model. When the arbiter evicts replicas to make
//! room for a model (or finds room free for it), that room is earmarked for
//! the model until one of its replicas reserves it or [`EARMARK_TTL`]
//! passes: other models waiting for room are refused it meanwhile, so the
//! room an eviction made is not taken by whichever waiter asks first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::device::Device;

/// How long room stays promised to a model that has not reserved it.
pub const EARMARK_TTL: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
struct Earmark {
    device: Device,
    mb: u64,
    since: Instant,
}

/// Live earmarks, at most one per model.
#[derive(Debug, Default)]
pub(super) struct Earmarks(BTreeMap<String, Earmark>);

impl Earmarks {
    /// Promises `mb` on `device` to `model` (replacing its earlier promise).
    pub(super) fn set(&mut self, model: &str, device: Device, mb: u64) {
        let mark = Earmark {
            device,
            mb,
            since: Instant::now(),
        };
        self.0.insert(model.to_string(), mark);
    }

    /// `model`'s promise is kept (one of its replicas reserved).
    pub(super) fn consume(&mut self, model: &str) {
        self.0.remove(model);
    }

    /// Forgets promises older than [`EARMARK_TTL`]; true when any went.
    pub(super) fn expire(&mut self) -> bool {
        let before = self.0.len();
        self.0.retain(|_, m| m.since.elapsed() < EARMARK_TTL);
        self.0.len() != before
    }

    /// MB promised on `device` to models other than `model` (every model's
    /// when `None`).
    pub(super) fn held_for_others(&self, device: Device, model: Option<&str>) -> u64 {
        self.0
            .iter()
            .filter(|(m, mark)| {
                mark.device == device
                    && model != Some(m.as_str())
                    && mark.since.elapsed() < EARMARK_TTL
            })
            .map(|(_, mark)| mark.mb)
            .sum()
    }
}

/// The model a budget owner (`model/id`) belongs to.
pub(super) fn model_of(owner: &str) -> &str {
    owner.rsplit_once('/').map_or(owner, |(model, _)| model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promised_room_counts_against_other_models_only() {
        let mut marks = Earmarks::default();
        marks.set("a", Device::Cpu, 40);
        marks.set("b", Device::Gpu(0), 10);
        assert_eq!(marks.held_for_others(Device::Cpu, Some("a")), 0);
        assert_eq!(marks.held_for_others(Device::Cpu, Some("b")), 40);
        assert_eq!(marks.held_for_others(Device::Cpu, None), 40);
        assert_eq!(marks.held_for_others(Device::Gpu(0), None), 10);
        marks.set("a", Device::Cpu, 25);
        assert_eq!(marks.held_for_others(Device::Cpu, Some("c")), 25);
        marks.consume("a");
        assert_eq!(marks.held_for_others(Device::Cpu, Some("c")), 0);
        assert!(!marks.expire());
    }

    #[test]
    fn owners_name_their_model() {
        assert_eq!(model_of("mlp-01/3"), "mlp-01");
        assert_eq!(model_of("plain"), "plain");
    }
}
