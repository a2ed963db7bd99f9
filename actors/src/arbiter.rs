//! The supervisor as the one arbiter of memory. Requests for a model with
//! no replica in memory make its batcher (or, before its first load, its
//! handle) send [`ModelDemanded`]; the supervisor then starts a replica and,
//! when the budget has no room for it, evicts idle replicas of other models
//! ranked by Greedy-Dual-Size-Frequency with a decaying frequency (see
//! [`crate::residency`]). Never evicted: a pinned model (`keep_loaded`), a
//! model with work queued or running, a replica ready for less than
//! `memory.min_residency_ms` (so two models cannot evict each other back
//! and forth), a replica still loading.
//! A failed model's replicas (restarting with backoff) may go at once.
//! Once a second, models idle for their `downscale_delay_s` give replicas
//! back down to `min_replicas` (0: the model leaves memory). Every decision
//! is logged, told to the observer (metrics) and kept for stats.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::{ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use tracing::{debug, info};

use crate::device::Device;
use crate::memory::{Earmark, GetLedger, Ledger};
use crate::messages::{DrainReplica, ModelDemanded};
use crate::model::{ModelHandle, Residency};
use crate::observer::{BatchObserver, ResidencyAction, ResidencyDecision};
use crate::residency::{self, Candidate};
use crate::supervisor::Supervisor;

/// Decisions kept for stats.
const DECISIONS_KEPT: usize = 64;

/// How often idle models (and backlogs, see [`crate::autoscale`]) are
/// looked at.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// How long a replica asked to leave counts as leaving (its memory as
/// coming back) before it is looked at afresh.
const EVICTION_GRACE: Duration = Duration::from_secs(30);

/// How residency is decided.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidencyConfig {
    /// The least time a replica stays ready before it may be evicted or
    /// scaled down.
    pub min_residency: Duration,
    /// Shorter for a model that loads quickly: a replica may be evicted
    /// once ready for this many times its model's load time, so at most
    /// about one part in this many of its time goes to loading it again
    /// (0: `min_residency` alone).
    pub min_residency_loads: u32,
    /// How long a replica that maps its weights serves before a packed one
    /// may replace it, and the span its model's batch sizes are judged
    /// over (see [`crate::repack`]); `None`: never.
    pub repack_after: Option<Duration>,
}

impl Default for ResidencyConfig {
    fn default() -> Self {
        ResidencyConfig {
            min_residency: Duration::from_secs(10),
            min_residency_loads: 0,
            repack_after: Some(crate::repack::REPACK_AFTER),
        }
    }
}

impl ResidencyConfig {
    /// How long a replica of a model that loads in `load` stays ready
    /// before it may be evicted for another model.
    pub fn eviction_floor(&self, load: Option<Duration>) -> Duration {
        match load {
            Some(load) if self.min_residency_loads > 0 => {
                (load * self.min_residency_loads).min(self.min_residency)
            }
            _ => self.min_residency,
        }
    }
}

/// The latest residency decisions, newest last (for stats).
#[derive(Debug, Clone, Default)]
pub struct Decisions(Arc<Mutex<VecDeque<ResidencyDecision>>>);

impl Decisions {
    fn push(&self, decision: ResidencyDecision) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == DECISIONS_KEPT {
            kept.pop_front();
        }
        kept.push_back(decision);
    }

    /// The decisions kept, oldest first.
    pub fn latest(&self) -> Vec<ResidencyDecision> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().cloned().collect()
    }
}

/// A replica asked to leave whose reservation the budget still holds.
struct Leaving {
    device: Device,
    mb: u64,
    since: Instant,
    /// The model it makes room for: its memory counts as coming back for
    /// that model only (the budget earmarks it so).
    for_model: String,
}

/// The arbiter's settings and state, held by the supervisor.
pub(crate) struct Arbiter {
    config: ResidencyConfig,
    leaving: BTreeMap<String, Leaving>,
    /// Models whose demand is being looked at (one look at a time).
    looking: BTreeSet<String>,
    decisions: Decisions,
    observer: Arc<dyn BatchObserver>,
}

impl Arbiter {
    pub(crate) fn new(
        config: ResidencyConfig,
        decisions: Decisions,
        observer: Arc<dyn BatchObserver>,
    ) -> Arbiter {
        Arbiter {
            config,
            leaving: BTreeMap::new(),
            looking: BTreeSet::new(),
            decisions,
            observer,
        }
    }

    pub(crate) fn min_residency(&self) -> Duration {
        self.config.min_residency
    }

    /// How long a mapped replica serves before a packed one may replace it
    /// (`None`: never).
    pub(crate) fn repack_after(&self) -> Option<Duration> {
        self.config.repack_after
    }

    pub(crate) fn decisions(&self) -> &Decisions {
        &self.decisions
    }

    pub(crate) fn decide(&self, model: &str, action: ResidencyAction, reason: String) {
        info!(model = %model, action = action.as_str(), reason = %reason, "residency decision");
        let decision = ResidencyDecision {
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            model: model.to_string(),
            action,
            reason,
        };
        self.observer.residency_decided(&decision);
        self.decisions.push(decision);
    }

    /// Forgets replicas that have left (the budget no longer holds them)
    /// or were asked long ago; returns the MB still leaving per device to
    /// make room for `model`.
    fn settle(&mut self, ledger: &Ledger, model: &str) -> BTreeMap<Device, u64> {
        self.leaving.retain(|owner, l| {
            ledger.held.contains_key(owner) && l.since.elapsed() < EVICTION_GRACE
        });
        let mut pending = BTreeMap::new();
        for l in self.leaving.values().filter(|l| l.for_model == model) {
            *pending.entry(l.device).or_insert(0) += l.mb;
        }
        pending
    }
}

impl Supervisor {
    /// Starts the once-a-second look at idle models.
    pub(crate) fn start_residency_ticks(&self, ctx: &mut Context<Self>) {
        ctx.run_interval(IDLE_TICK, |act, ctx| {
            act.scale_down_idle();
            act.autoscale(ctx);
        });
    }

    /// Replicas of models idle for their `downscale_delay_s` leave, one per
    /// model per look, down to `min_replicas`.
    fn scale_down_idle(&mut self) {
        let floor = self.residency.config.min_residency;
        let mut leaving = Vec::new();
        for (name, plan) in &self.plans {
            let settings = &plan.handle.spec.settings;
            // Without min_replicas, what the operator set stays.
            let keep = settings
                .min_replicas
                .unwrap_or(usize::MAX)
                .min(plan.handle.state.desired_replicas());
            if plan.ids.len() <= keep || settings.keep_loaded {
                continue;
            }
            let usage = &plan.handle.state.usage;
            let delay = Duration::from_secs(settings.downscale_delay_s);
            // A model never asked for counts as idle since it loaded.
            let last = |id: usize| usage.idle_for().or(usage.ready_for(id));
            let idle = usage.is_idle();
            let Some(&id) = plan.ids.iter().rev().find(|&&id| {
                idle && usage.ready_for(id).is_some_and(|r| r >= floor)
                    && last(id).is_some_and(|i| i >= delay)
            }) else {
                continue;
            };
            leaving.push((name.clone(), id, delay));
        }
        for (name, id, delay) in leaving {
            let Some(plan) = self.plans.get_mut(&name) else {
                continue;
            };
            plan.ids.retain(|&i| i != id);
            plan.handle.batcher.do_send(DrainReplica { id });
            let left = plan.ids.len();
            self.residency.decide(
                &name,
                ResidencyAction::ScaleDown,
                format!(
                    "no request for {} s; replica {id} leaves, {left} stay",
                    delay.as_secs()
                ),
            );
        }
    }
}

impl Handler<ModelDemanded> for Supervisor {
    type Result = ();

    /// Requests wait for `model`: start a replica when it has none planned,
    /// and make room for one when the budget has none.
    fn handle(&mut self, msg: ModelDemanded, ctx: &mut Self::Context) {
        let Some(plan) = self.plans.get(&msg.model) else {
            return;
        };
        let current = Arc::ptr_eq(&plan.handle.state, &msg.state);
        if !current || plan.handle.state.desired_replicas() == 0 {
            return;
        }
        if !self.residency.looking.insert(msg.model.clone()) {
            return;
        }
        let handle = plan.handle.clone();
        let (mb, configured) = handle.state.reservation_mb(&handle.spec);
        let ask = GetLedger {
            placement: handle.spec.settings.placement(),
            mb,
            headroom_mb: handle.state.load_headroom_mb(&handle.spec),
            configured,
            model: msg.model.clone(),
        };
        let budget = self.budget.clone();
        let look = async move { budget.send(ask).await };
        ctx.spawn(look.into_actor(self).map(move |ledger, act, ctx| {
            act.residency.looking.remove(handle.name());
            let still_current = act
                .plans
                .get(handle.name())
                .is_some_and(|p| Arc::ptr_eq(&p.handle, &handle));
            if !still_current {
                return;
            }
            let ledger = match ledger {
                Ok(Ok(ledger)) => ledger,
                Ok(Err(why)) => {
                    debug!(model = %handle.name(), reason = %why, "no device for the model");
                    return;
                }
                Err(e) => {
                    debug!(model = %handle.name(), error = %e, "memory budget did not answer");
                    return;
                }
            };
            let Some(evicted) = act.make_room(&handle, &ledger) else {
                return;
            };
            act.load_if_unplanned(&handle, evicted, ctx);
        }));
    }
}

impl Supervisor {
    /// Evicts what must go for one replica of `handle` to fit and earmarks
    /// the room for it; returns the models evicted (empty when it fits
    /// already). `None` when nothing that may go would free enough: then
    /// nothing goes, and the requests keep waiting for a replica to turn
    /// idle or old enough.
    fn make_room(&mut self, handle: &Arc<ModelHandle>, ledger: &Ledger) -> Option<Vec<String>> {
        let mb = ledger.needs_mb;
        let pending = self.residency.settle(ledger, handle.name());
        let candidates = self.eviction_candidates(handle.name(), ledger);
        let room = residency::make_room(
            ledger,
            &|device| pending.get(&device).copied().unwrap_or(0),
            mb,
            &candidates,
        );
        let room = match room {
            Ok(room) => room,
            Err(most) => {
                debug!(
                    model = %handle.name(),
                    needs_mb = mb,
                    could_free_mb = most,
                    "no room yet; requests wait for replicas to turn idle"
                );
                return None;
            }
        };
        self.budget.do_send(Earmark {
            model: handle.name().to_string(),
            device: room.device,
            mb,
        });
        let mut evicted = Vec::new();
        for victim in room.victims {
            let Some(plan) = self.plans.get_mut(&victim.model) else {
                continue;
            };
            plan.ids.retain(|&id| id != victim.id);
            plan.handle.batcher.do_send(DrainReplica { id: victim.id });
            let leaving = Leaving {
                device: victim.device,
                mb: victim.mb,
                since: Instant::now(),
                for_model: handle.name().to_string(),
            };
            self.residency.leaving.insert(victim.owner.clone(), leaving);
            self.residency.decide(
                &victim.model,
                ResidencyAction::Evict,
                format!(
                    "replica {} ({} MB on {}) makes room for {} (needs {mb} MB); priority {:.2}",
                    victim.id,
                    victim.mb,
                    victim.device,
                    handle.name(),
                    victim.priority
                ),
            );
            evicted.push(victim.model);
        }
        Some(evicted)
    }

    /// Idle, unpinned replicas of other models, ready long enough, that
    /// the budget holds and that are not already leaving, with their GDSF
    /// priorities.
    fn eviction_candidates(&self, needy: &str, ledger: &Ledger) -> Vec<Candidate> {
        let mut candidates = Vec::new();
        for (name, plan) in &self.plans {
            let handle = &plan.handle;
            let usage = &handle.state.usage;
            if name == needy || handle.spec.settings.keep_loaded || !usage.is_idle() {
                continue;
            }
            let failed = matches!(handle.state.residency(), Residency::Failed(_));
            let load_ms = usage
                .load_time()
                .map_or(1000, |t| t.as_millis().max(1) as u64);
            let floor = self.residency.config.eviction_floor(usage.load_time());
            for &id in &plan.ids {
                let owner = format!("{name}/{id}");
                let Some(&(device, mb)) = ledger.held.get(&owner) else {
                    continue;
                };
                // A failed model's replicas serve nothing: they may go at once.
                let old_enough = failed || usage.ready_for(id).is_some_and(|r| r >= floor);
                if !old_enough || self.residency.leaving.contains_key(&owner) {
                    continue;
                }
                let demand = usage.demand();
                candidates.push(Candidate {
                    owner,
                    model: name.clone(),
                    id,
                    device,
                    mb,
                    priority: residency::priority(demand, plan.ids.len(), load_ms, mb),
                });
            }
        }
        candidates
    }

    /// A model with no replica planned gets one (its reservation waits for
    /// the room just made, when the evicted have not left yet).
    fn load_if_unplanned(
        &mut self,
        handle: &Arc<ModelHandle>,
        evicted: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        let name = handle.name().to_string();
        let Some(plan) = self.plans.get(&name) else {
            return;
        };
        if !plan.ids.is_empty() {
            return;
        }
        let ids = self.take_ids(&name, 1);
        if let Some(plan) = self.plans.get_mut(&name) {
            plan.ids.extend(&ids);
        }
        let reason = if evicted.is_empty() {
            "requests wait for it".to_string()
        } else {
            format!("requests wait for it; evicted {}", evicted.join(", "))
        };
        self.residency.decide(&name, ResidencyAction::Load, reason);
        self.spawn_starts(handle.clone(), ids, ctx);
    }
}
