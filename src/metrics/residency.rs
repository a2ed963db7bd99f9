//! Residency on the Prometheus page: what the supervisor decided (loads,
//! evictions, idle scale-downs, counted as they happen), how long requests
//! waited for their model to load, and which models are in memory now
//! (read from each scrape's snapshot). Resident bytes per device are the
//! budget's `gantry_memory_budget_reserved_bytes`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use gantry_actors::model::Residency;
use gantry_actors::observer::ResidencyDecision;
use gantry_actors::supervisor::ServerSnapshot;

use super::prometheus::{Latencies, ModelLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    model: String,
    action: String,
}

/// Residency series recorded as events happen.
#[derive(Clone)]
pub struct ResidencySeries {
    decisions: Family<DecisionLabels, Counter>,
    load_wait: Latencies,
}

impl ResidencySeries {
    /// The series, registered in `registry`; waits bucketed as `load_wait`.
    pub fn register(registry: &mut Registry, load_wait: Latencies) -> ResidencySeries {
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "residency_decisions",
            "Residency decisions by model and action (load, evict, scale_up, undo_scale_up, scale_down, repack)",
            decisions.clone(),
        );
        registry.register_with_unit(
            "load_wait_duration",
            "Time requests waited for their model to be loaded into memory",
            Unit::Seconds,
            load_wait.clone(),
        );
        ResidencySeries {
            decisions,
            load_wait,
        }
    }

    pub fn decided(&self, decision: &ResidencyDecision) {
        self.decisions
            .get_or_create(&DecisionLabels {
                model: decision.model.clone(),
                action: decision.action.as_str().to_string(),
            })
            .inc();
    }

    pub fn waited(&self, model: &str, waited: std::time::Duration) {
        self.load_wait
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .observe(waited.as_secs_f64());
    }
}

/// `gantry_model_resident{model}`: 1 when a replica is in memory, 0 when
/// the model is out of it (cold, loading, failed).
pub fn register_state(r: &mut Registry, snapshot: &ServerSnapshot) {
    let resident = Family::<ModelLabels, Gauge>::default();
    for m in &snapshot.models {
        let labels = ModelLabels {
            model: m.name.clone(),
        };
        resident
            .get_or_create(&labels)
            .set(i64::from(m.residency == Residency::Resident));
    }
    r.register(
        "model_resident",
        "1 when a replica of the model is in memory, 0 when it is out (loaded on its next request)",
        resident,
    );
}
