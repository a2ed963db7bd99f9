//! Replicas for hot models, within `replicas`..`max_replicas`. Once a second
//! the supervisor looks at each model's queue: when it has held at least a
//! full batch per ready replica (more than the replicas drain) at every look
//! for `upscale_delay_s`, a replica is added where the budget has room
//! (never by evicting: a cold model's load may take that room first, and may
//! evict the added replica once it is idle). The added replica is a trial:
//! once it is ready and the backlog lasts another `upscale_delay_s`, the
//! model's measured throughput (items run per second) is compared with what
//! it was before; less than 10% more and the replica is taken back (on one
//! CPU whose thread pool every session shares a second session often adds
//! nothing; on a GPU a second stream usually does), and the model is not
//! scaled up again for [`HOLD_AFTER_UNDO`]. Replicas above `replicas` go
//! back one at a time once the model has had no backlog for
//! `downscale_delay_s`. The same look replaces replicas that map their
//! weights by packed ones once their model stays busy (see
//! [`crate::repack`]). Each decision is logged and kept for stats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use tracing::{debug, info, warn};

use crate::batcher::IfRefused;
use crate::messages::DrainReplica;
use crate::model::{ModelHandle, Residency};
use crate::observer::ResidencyAction;
use crate::repack::{RepackStep, Repacking, LOAD_LIMIT};
use crate::supervisor::{start_replicas, Supervisor};

/// How long a model whose scale-up was undone is not scaled up again.
pub(crate) const HOLD_AFTER_UNDO: Duration = Duration::from_secs(60);

/// How much more throughput a trial replica must bring to stay.
const TRIAL_GAIN: f64 = 1.10;

/// How long a trial replica may take to turn ready before it is judged
/// anyway (a replica that never loads is the supervision's business).
const TRIAL_LOAD_LIMIT: Duration = Duration::from_secs(120);

/// One model's scaling state.
#[derive(Debug, Default)]
pub(crate) struct Scaling {
    /// Since when its queue has held a backlog at every look, and the items
    /// it had run by then.
    backlog_since: Option<(Instant, u64)>,
    /// The last look that saw a backlog.
    last_backlog: Option<Instant>,
    trial: Option<Trial>,
    /// No scale-up before this (after an undone one).
    hold_until: Option<Instant>,
    repacking: Repacking,
}

/// A replica added by a scale-up, on trial.
#[derive(Debug)]
struct Trial {
    id: usize,
    /// Items per second before it was added.
    before_per_s: f64,
    added: Instant,
    /// Since when it has been ready, and the items run by then.
    measuring_from: Option<(Instant, u64)>,
}

/// What one look decided for one model.
enum Step {
    Nothing,
    Add { before_per_s: f64, backlog_s: u64 },
    Undo { id: usize, before: f64, after: f64 },
    Keep { before: f64, after: f64 },
    Remove { id: usize, quiet_s: u64 },
    Repack { mapped: usize, mean_batch: f64 },
    Retire { mapped: usize, packed: usize },
    GiveUp { packed: usize },
}

impl Scaling {
    /// One look at `handle`, whose plan holds `ids`; mapped replicas are
    /// judged for repacking over spans of `repack_after` (`None`: never).
    fn look(
        &mut self,
        handle: &ModelHandle,
        ids: &[usize],
        now: Instant,
        repack_after: Option<Duration>,
    ) -> Step {
        let settings = &handle.spec.settings;
        let usage = &handle.state.usage;
        let processed = usage.processed();
        let ready = handle.state.ready_replicas().max(1);
        let backlog = usage.queued() >= settings.max_batch_size.max(1) * ready;
        if backlog {
            self.backlog_since.get_or_insert((now, processed));
            self.last_backlog = Some(now);
        } else {
            self.backlog_since = None;
        }
        let delay = Duration::from_secs(settings.upscale_delay_s);
        if let Some(trial) = &mut self.trial {
            if !ids.contains(&trial.id) {
                // Evicted or scaled away meanwhile: nothing to judge.
                self.trial = None;
                return Step::Nothing;
            }
            let Some((from, at_start)) = trial.measuring_from else {
                if usage.ready_for(trial.id).is_some() || trial.added.elapsed() > TRIAL_LOAD_LIMIT {
                    trial.measuring_from = Some((now, processed));
                }
                return Step::Nothing;
            };
            if now.duration_since(from) < delay {
                return Step::Nothing;
            }
            let (before, id) = (trial.before_per_s, trial.id);
            self.trial = None;
            if !backlog {
                // The backlog is gone: whatever it was, it is served.
                return Step::Nothing;
            }
            let after = (processed - at_start) as f64 / now.duration_since(from).as_secs_f64();
            if after < before * TRIAL_GAIN {
                self.hold_until = Some(now + HOLD_AFTER_UNDO);
                return Step::Undo { id, before, after };
            }
            return Step::Keep { before, after };
        }
        match self.repacking.under_way(usage, ids, now) {
            Some(RepackStep::Retire { mapped, packed }) => {
                // An operator who asked for more replicas meanwhile keeps
                // the mapped one too (a later look repacks it).
                if ids.len() > handle.state.desired_replicas() {
                    return Step::Retire { mapped, packed };
                }
                return Step::Nothing;
            }
            Some(RepackStep::GiveUp { packed }) => return Step::GiveUp { packed },
            Some(_) => return Step::Nothing,
            None => {}
        }
        if let Some((since, at_start)) = self.backlog_since {
            let held = now.duration_since(since);
            let most = settings
                .most_replicas()
                .max(handle.state.desired_replicas());
            let room_to_grow = ids.len() < most;
            let resident = handle.state.residency() == Residency::Resident;
            let holding = self.hold_until.is_some_and(|until| now < until);
            if held >= delay && room_to_grow && resident && !holding {
                let before_per_s = (processed - at_start) as f64 / held.as_secs_f64().max(0.001);
                self.backlog_since = None;
                return Step::Add {
                    before_per_s,
                    backlog_s: held.as_secs(),
                };
            }
        }
        if let Some(span) = repack_after {
            let resident = handle.state.residency() == Residency::Resident;
            if let RepackStep::Start { mapped, mean_batch } =
                self.repacking.due(usage, resident, ids, now, span)
            {
                return Step::Repack { mapped, mean_batch };
            }
        }
        let quiet = Duration::from_secs(settings.downscale_delay_s);
        let quiet_for = self.last_backlog.map_or(quiet, |at| now.duration_since(at));
        // Down to what the operator set (model.toml, or a scale request),
        // a replica that maps its weights first (it runs batches slower).
        if ids.len() > handle.state.desired_replicas() && quiet_for >= quiet {
            let mapped = usage.longest_mapped().map(|(id, _)| id);
            if let Some(&id) = mapped.filter(|id| ids.contains(id)).as_ref().or(ids.last()) {
                return Step::Remove {
                    id,
                    quiet_s: quiet_for.as_secs(),
                };
            }
        }
        Step::Nothing
    }
}

impl Supervisor {
    /// One look at every model's backlog: scale-ups, trials judged,
    /// scale-downs once the backlog is gone.
    pub(crate) fn autoscale(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let names: Vec<String> = self.plans.keys().cloned().collect();
        self.scaling.retain(|name, _| names.contains(name));
        for name in names {
            let Some(plan) = self.plans.get(&name) else {
                continue;
            };
            let (handle, ids) = (plan.handle.clone(), plan.ids.clone());
            let repack_after = self.residency.repack_after();
            let step = self.scaling.entry(name.clone()).or_default().look(
                &handle,
                &ids,
                now,
                repack_after,
            );
            match step {
                Step::Nothing => {}
                Step::Add {
                    before_per_s,
                    backlog_s,
                } => self.scale_up(&handle, before_per_s, backlog_s, ctx),
                Step::Undo { id, before, after } => {
                    self.take_back(&name, id);
                    self.residency.decide(
                        &name,
                        ResidencyAction::UndoScaleUp,
                        format!(
                            "replica {id} raised throughput from {before:.1} to {after:.1} items/s only \
                             (less than {:.0}% more); taken back, no scale-up for {} s",
                            (TRIAL_GAIN - 1.0) * 100.0,
                            HOLD_AFTER_UNDO.as_secs()
                        ),
                    );
                }
                Step::Keep { before, after } => {
                    debug!(model = %name, before, after, "the added replica raised throughput; kept");
                }
                Step::Remove { id, quiet_s } => {
                    self.take_back(&name, id);
                    self.residency.decide(
                        &name,
                        ResidencyAction::ScaleDown,
                        format!("no backlog for {quiet_s} s; replica {id} leaves"),
                    );
                }
                Step::Repack { mapped, mean_batch } => {
                    self.repack(&handle, mapped, mean_batch, ctx);
                }
                Step::Retire { mapped, packed } => {
                    self.take_back(&name, mapped);
                    info!(model = %name, mapped, packed, "packed replica ready; the mapped one leaves");
                }
                Step::GiveUp { packed } => {
                    self.take_back(&name, packed);
                    warn!(
                        model = %name,
                        packed,
                        limit_s = LOAD_LIMIT.as_secs(),
                        "packed replica not ready in time; taken back, the mapped one stays"
                    );
                }
            }
        }
    }

    /// Drains replica `id` of `name` and takes it out of its plan.
    fn take_back(&mut self, name: &str, id: usize) {
        if let Some(plan) = self.plans.get_mut(name) {
            plan.ids.retain(|&i| i != id);
            plan.handle.batcher.do_send(DrainReplica { id });
        }
    }

    /// Adds a trial replica to `handle` where the budget has room now; with
    /// no room, nothing is added (and nothing waits for room).
    fn scale_up(
        &mut self,
        handle: &Arc<ModelHandle>,
        before_per_s: f64,
        backlog_s: u64,
        ctx: &mut Context<Self>,
    ) {
        let most = handle.spec.settings.most_replicas();
        self.add_replica_if_room(handle, ctx, move |act, name, id| {
            let scaling = act.scaling.entry(name.to_string()).or_default();
            scaling.trial = Some(Trial {
                id,
                before_per_s,
                added: Instant::now(),
                measuring_from: None,
            });
            let replicas = act.plans.get(name).map_or(0, |p| p.ids.len());
            act.residency.decide(
                name,
                ResidencyAction::ScaleUp,
                format!(
                    "a backlog of a full batch per replica for {backlog_s} s at {before_per_s:.1} items/s; \
                     replica {id} added on trial ({replicas} of at most {most})"
                ),
            );
        });
    }

    /// Loads a packed replica of `handle` to replace `mapped`, which maps
    /// its weights, where the budget has room now.
    fn repack(
        &mut self,
        handle: &Arc<ModelHandle>,
        mapped: usize,
        mean_batch: f64,
        ctx: &mut Context<Self>,
    ) {
        let span_s = self
            .residency
            .repack_after()
            .map_or(0, |span| span.as_secs_f64().round() as u64);
        self.add_replica_if_room(handle, ctx, move |act, name, id| {
            let scaling = act.scaling.entry(name.to_string()).or_default();
            scaling.repacking.started(id, mapped, Instant::now());
            act.residency.decide(
                name,
                ResidencyAction::Repack,
                format!(
                    "replica {mapped} maps its weights and the model's batches held {mean_batch:.1} items \
                     on average for {span_s} s; packed replica {id} loads to take its place"
                ),
            );
        });
    }

    /// Starts one more replica of `handle` where the budget has room now,
    /// then `granted` with the model's name and the replica's id; with no
    /// room, nothing is added and nothing waits for room.
    fn add_replica_if_room(
        &mut self,
        handle: &Arc<ModelHandle>,
        ctx: &mut Context<Self>,
        granted: impl FnOnce(&mut Self, &str, usize) + 'static,
    ) {
        let name = handle.name().to_string();
        let ids = self.take_ids(&name, 1);
        let Some(&id) = ids.first() else {
            return;
        };
        if let Some(plan) = self.plans.get_mut(&name) {
            plan.ids.push(id);
        }
        let budget = self.budget.clone();
        let provider = self.provider.clone();
        let starting = handle.clone();
        let start = async move {
            start_replicas(&starting, ids, &budget, provider.as_ref(), IfRefused::Skip).await
        };
        ctx.spawn(start.into_actor(self).map(move |refused, act, _ctx| {
            if !refused.is_empty() {
                if let Some(plan) = act.plans.get_mut(&name) {
                    plan.ids.retain(|i| !refused.contains(i));
                }
                debug!(model = %name, "no room for another replica now");
                return;
            }
            granted(act, &name, id);
        }));
    }
}

/// Each model's scaling state, by name.
pub(crate) type ScalingStates = BTreeMap<String, Scaling>;
