//! Changing what is served while it is served: scaling a model's replicas,
//! reloading the repository, loading or unloading one model. Nothing here
//! fails a request: a replica being removed drains (finishes what it holds,
//! takes nothing new); a model whose file or settings changed is replaced
//! blue-green (the new one serves once a replica is ready, then the old one
//! drains); a removed model leaves the registry at once and serves what it
//! already queued.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, Message, WrapFuture};
use tracing::{info, warn};

use crate::batcher::IfRefused;
use crate::messages::{DrainReplica, RetireModel};
use crate::model::ModelHandle;
use crate::repository::{self, LoadError, ModelSettings, ModelSpec, ScanOneError};
use crate::supervisor::{register_model, start_replicas, ReplicaPlan, Supervisor};

/// How long a replacement may take to get a ready replica before it is
/// abandoned (the old model keeps serving).
const REPLACE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a lifecycle operation could not be done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LifecycleError {
    #[error("Request for unknown model: '{0}' is not found")]
    UnknownModel(String),
    /// A load of a model that has no folder, worded for the load.
    #[error("{0}")]
    NotInRepository(String),
    /// Not a name a model can have (see [`repository::check_name`]), or a
    /// folder that resolves outside the repository; nothing was read.
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    Repository(String),
    /// A load's settings override that the model's settings refuse; the
    /// file itself is fine, and nothing changed.
    #[error("{0}")]
    InvalidOverride(String),
}

/// What one model became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    /// New file or settings: a new instance takes over once ready.
    Replacing,
    /// Only the replica count changed.
    Rescaled,
    Unchanged,
    Removed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Replacing => "replacing",
            Change::Rescaled => "rescaled",
            Change::Unchanged => "unchanged",
            Change::Removed => "removed",
        }
    }
}

/// What a reload did, per model, and the folders that failed.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    pub changes: Vec<(String, Change)>,
    pub failed: Vec<LoadError>,
}

/// Set a model's replica count.
#[derive(Message)]
#[rtype(result = "Result<(usize, usize), LifecycleError>")]
pub struct ScaleModel {
    pub model: String,
    pub replicas: usize,
}

/// Re-read the whole repository and converge to it.
#[derive(Message)]
#[rtype(result = "Result<ReloadReport, LifecycleError>")]
pub struct Reload;

/// (Re)load one model folder, with `model.toml` keys overridden for this
/// load when `overrides` is set.
#[derive(Message)]
#[rtype(result = "Result<Loading, LifecycleError>")]
pub struct LoadModel {
    pub model: String,
    pub overrides: Option<repository::LoadOverrides>,
}

/// What a load started: the change, and the instance that will serve the
/// model once it has a ready replica (for a replacement, the new one; it
/// takes the name from the current one when ready).
#[derive(Debug, Clone)]
pub struct Loading {
    pub change: Change,
    pub handle: Arc<ModelHandle>,
}

/// A load whose instance will not become ready (its replicas failed, or it
/// took too long): a new model is removed and reported failed with
/// `reason`, a replacement is dropped and the current model keeps serving.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AbandonLoad {
    pub handle: Arc<ModelHandle>,
    pub reason: String,
}

/// Stop serving one model.
#[derive(Message)]
#[rtype(result = "Result<(), LifecycleError>")]
pub struct UnloadModel {
    pub model: String,
}

/// Settings equal but for the replica count.
fn only_replicas_differ(a: &ModelSettings, b: &ModelSettings) -> bool {
    let mut a = a.clone();
    a.replicas = b.replicas;
    a == *b
}

impl Supervisor {
    /// `n` replica ids for `model` that were never used before.
    pub(crate) fn take_ids(&mut self, model: &str, n: usize) -> Vec<usize> {
        let next = self.issued_ids.entry(model.to_string()).or_insert(0);
        let ids = (*next..*next + n).collect();
        *next += n;
        ids
    }

    /// Starts replicas `ids` of `handle` in the background.
    pub(crate) fn spawn_starts(
        &self,
        handle: Arc<ModelHandle>,
        ids: Vec<usize>,
        ctx: &mut Context<Self>,
    ) {
        if ids.is_empty() {
            return;
        }
        let budget = self.budget.clone();
        let provider = self.provider.clone();
        ctx.spawn(
            async move {
                start_replicas(&handle, ids, &budget, provider.as_ref(), IfRefused::Wait).await;
            }
            .into_actor(self),
        );
    }

    /// Grows or shrinks a plan; returns the old count.
    fn rescale(&mut self, model: &str, replicas: usize, ctx: &mut Context<Self>) -> Option<usize> {
        let before = self.plans.get(model)?.ids.len();
        let new = self.take_ids(model, replicas.saturating_sub(before));
        let plan = self.plans.get_mut(model)?;
        plan.handle.state.set_desired_replicas(replicas);
        if replicas < before {
            for id in plan.ids.split_off(replicas) {
                plan.handle.batcher.do_send(DrainReplica { id });
            }
            return Some(before);
        }
        plan.ids.extend(&new);
        let handle = plan.handle.clone();
        self.spawn_starts(handle, new, ctx);
        Some(before)
    }

    fn set_registry(&self, handle: Arc<ModelHandle>) {
        self.registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.spec.name.clone(), handle);
        self.readiness.changed();
    }

    /// Converges one model to `spec`.
    fn apply_spec(&mut self, spec: ModelSpec, ctx: &mut Context<Self>) -> Change {
        let name = spec.name.clone();
        let replicas = spec.settings.replicas;
        let Some(current) = self.plans.get(&name).map(|p| p.handle.spec.clone()) else {
            let handle = register_model(
                spec,
                self.observer.clone(),
                &self.budget,
                &self.readiness,
                &self.demands,
                &self.footprints,
            );
            self.set_registry(handle.clone());
            let ids = self.take_ids(&name, replicas);
            let plan = ReplicaPlan::new(handle.clone(), ids);
            self.spawn_starts(handle, plan.ids.clone(), ctx);
            self.plans.insert(name, plan);
            return Change::Added;
        };
        if let Some((pending, _)) = self.replacing.get(&name) {
            if *pending == spec {
                return Change::Replacing;
            }
        }
        let same_model = current.version == spec.version
            && current.memory_mb == spec.memory_mb
            && only_replicas_differ(&current.settings, &spec.settings);
        if same_model {
            // Back to what is serving: a pending replacement is not needed.
            if let Some((_, pending)) = self.replacing.remove(&name) {
                pending.batcher.do_send(RetireModel);
            }
            if current.settings.replicas == replicas && self.plans[&name].ids.len() == replicas {
                return Change::Unchanged;
            }
            self.rescale(&name, replicas, ctx);
            return Change::Rescaled;
        }
        self.replace(spec, ctx);
        Change::Replacing
    }

    /// Blue-green: start the new instance beside the old; once it has a
    /// ready replica it takes the name, and the old one drains.
    fn replace(&mut self, spec: ModelSpec, ctx: &mut Context<Self>) {
        let name = spec.name.clone();
        let replicas = spec.settings.replicas;
        let fresh = register_model(
            spec.clone(),
            self.observer.clone(),
            &self.budget,
            &self.readiness,
            &self.demands,
            &self.footprints,
        );
        if let Some((_, superseded)) = self.replacing.insert(name.clone(), (spec, fresh.clone())) {
            superseded.batcher.do_send(RetireModel);
        }
        let ids = self.take_ids(&name, replicas);
        let plan = ReplicaPlan::new(fresh.clone(), ids);
        let ids = plan.ids.clone();
        let budget = self.budget.clone();
        let provider = self.provider.clone();
        info!(model = %name, "replacing model; the current one serves until the new one is ready");
        let starting = fresh.clone();
        let wait = async move {
            start_replicas(&starting, ids, &budget, provider.as_ref(), IfRefused::Wait).await;
            let deadline = Instant::now() + REPLACE_TIMEOUT;
            while !starting.is_ready() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            starting.is_ready()
        };
        ctx.spawn(wait.into_actor(self).map(move |ready, act, ctx| {
            let current = act
                .replacing
                .get(&name)
                .is_some_and(|(_, pending)| Arc::ptr_eq(pending, &fresh));
            if !current {
                // Superseded by a newer replacement (already retired).
                return;
            }
            // A scale request that came while this was pending is in its spec.
            let wanted = act.replacing.remove(&name).map(|(spec, _)| spec.settings.replicas);
            if !ready {
                warn!(model = %name, "replacement never became ready; keeping the current model");
                fresh.batcher.do_send(RetireModel);
                return;
            }
            act.set_registry(fresh.clone());
            let started = plan.ids.len();
            if let Some(old) = act.plans.insert(name.clone(), plan) {
                old.handle.batcher.do_send(RetireModel);
            }
            info!(model = %name, "replacement serving; previous instance draining");
            if let Some(replicas) = wanted.filter(|&n| n != started) {
                act.rescale(&name, replicas, ctx);
                info!(model = %name, from = started, to = replicas, "scaled as asked while the replacement was pending");
            }
        }));
    }

    /// Takes a model out of the registry (new requests get 404) and lets
    /// its batcher finish what it holds.
    fn remove(&mut self, name: &str) -> bool {
        if let Some((_, pending)) = self.replacing.remove(name) {
            pending.batcher.do_send(RetireModel);
        }
        let Some(plan) = self.plans.remove(name) else {
            return false;
        };
        self.registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.readiness.changed();
        plan.handle.batcher.do_send(RetireModel);
        info!(model = %name, "model removed; draining");
        true
    }

    /// Notes `model` as unloaded (with the version it served) or, with
    /// `None`, as loaded or gone.
    fn set_unloaded(&self, model: &str, version: Option<String>) {
        let mut unloaded = self.unloaded.write().unwrap_or_else(|e| e.into_inner());
        match version {
            Some(version) => unloaded.insert(model.to_string(), version),
            None => unloaded.remove(model),
        };
    }

    fn set_load_error(&self, model: &str, error: Option<String>) {
        let mut errors = self.load_errors.write().unwrap_or_else(|e| e.into_inner());
        errors.retain(|e| e.model != model);
        if let Some(error) = error {
            errors.push(LoadError {
                model: model.to_string(),
                error,
            });
        }
    }
}

impl Handler<ScaleModel> for Supervisor {
    type Result = Result<(usize, usize), LifecycleError>;

    fn handle(&mut self, msg: ScaleModel, ctx: &mut Self::Context) -> Self::Result {
        repository::check_name(&msg.model)
            .map_err(|e| LifecycleError::InvalidName(e.to_string()))?;
        let before = self
            .rescale(&msg.model, msg.replicas, ctx)
            .ok_or_else(|| LifecycleError::UnknownModel(msg.model.clone()))?;
        // A pending replacement takes over with this count too.
        if let Some((pending, _)) = self.replacing.get_mut(&msg.model) {
            pending.settings.replicas = msg.replicas;
        }
        info!(model = %msg.model, from = before, to = msg.replicas, "scaled");
        Ok((before, msg.replicas))
    }
}

impl Handler<Reload> for Supervisor {
    type Result = AtomicResponse<Self, Result<ReloadReport, LifecycleError>>;

    fn handle(&mut self, _: Reload, _ctx: &mut Self::Context) -> Self::Result {
        let dir = self.models_dir.clone();
        let scan = async move {
            tokio::task::spawn_blocking(move || repository::scan(&dir))
                .await
                .map_err(|e| LifecycleError::Repository(e.to_string()))?
                .map_err(LifecycleError::Repository)
        };
        AtomicResponse::new(Box::pin(scan.into_actor(self).map(|scan, act, ctx| {
            let scan = scan?;
            let mut report = ReloadReport::default();
            let present: Vec<String> = scan.models.iter().map(|m| m.name.clone()).collect();
            for spec in scan.models {
                let name = spec.name.clone();
                act.set_unloaded(&name, None);
                report.changes.push((name, act.apply_spec(spec, ctx)));
            }
            let failed: Vec<String> = scan.errors.iter().map(|e| e.model.clone()).collect();
            let gone: Vec<String> = act
                .plans
                .keys()
                .filter(|name| !present.contains(name) && !failed.contains(name))
                .cloned()
                .collect();
            act.unloaded
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|name, _| present.contains(name) || failed.contains(name));
            for name in gone {
                act.remove(&name);
                report.changes.push((name, Change::Removed));
            }
            *act.load_errors.write().unwrap_or_else(|e| e.into_inner()) = scan.errors.clone();
            report.failed = scan.errors;
            info!(changes = ?report.changes, failed = report.failed.len(), "repository reloaded");
            Ok(report)
        })))
    }
}

/// Why reading a folder for a load failed.
enum ReadFailure {
    Scan(ScanOneError),
    /// The folder reads without the override but not with it.
    Override(String),
}

/// Reads `dir/name` with `overrides`; a failure that only the override
/// causes is told apart from one of the folder itself.
fn read_for_load(
    dir: &std::path::Path,
    name: &str,
    overrides: Option<&repository::LoadOverrides>,
) -> Result<Option<ModelSpec>, ReadFailure> {
    match repository::scan_one_with(dir, name, overrides) {
        Err(ScanOneError::Load(why)) if overrides.is_some() => {
            match repository::scan_one(dir, name) {
                Ok(Some(_)) => Err(ReadFailure::Override(why)),
                Ok(None) => Ok(None),
                Err(e) => Err(ReadFailure::Scan(e)),
            }
        }
        read => read.map_err(ReadFailure::Scan),
    }
}

impl Handler<LoadModel> for Supervisor {
    type Result = AtomicResponse<Self, Result<Loading, LifecycleError>>;

    /// A refused name or override changes nothing, not even the load errors
    /// that health and the repository index report.
    fn handle(&mut self, msg: LoadModel, _ctx: &mut Self::Context) -> Self::Result {
        let dir = self.models_dir.clone();
        let name = msg.model.clone();
        let overrides = msg.overrides;
        let read = async move {
            tokio::task::spawn_blocking(move || read_for_load(&dir, &name, overrides.as_ref()))
                .await
                .map_err(|e| LifecycleError::Repository(e.to_string()))
        };
        AtomicResponse::new(Box::pin(read.into_actor(self).map(
            move |read, act, ctx| match read? {
                Ok(Some(spec)) => {
                    act.set_load_error(&msg.model, None);
                    act.set_unloaded(&msg.model, None);
                    let change = act.apply_spec(spec, ctx);
                    let handle = match act.replacing.get(&msg.model) {
                        Some((_, pending)) if change == Change::Replacing => pending.clone(),
                        _ => act.plans[&msg.model].handle.clone(),
                    };
                    Ok(Loading { change, handle })
                }
                Ok(None) => {
                    // No folder (any more): an earlier failure is stale.
                    act.set_load_error(&msg.model, None);
                    act.set_unloaded(&msg.model, None);
                    Err(LifecycleError::UnknownModel(msg.model))
                }
                Err(ReadFailure::Scan(ScanOneError::Name(refused))) => {
                    Err(LifecycleError::InvalidName(refused.to_string()))
                }
                Err(ReadFailure::Scan(ScanOneError::Load(error))) => {
                    act.set_load_error(&msg.model, Some(error.clone()));
                    Err(LifecycleError::Repository(error))
                }
                Err(ReadFailure::Override(error)) => Err(LifecycleError::InvalidOverride(error)),
            },
        )))
    }
}

impl Handler<AbandonLoad> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: AbandonLoad, _ctx: &mut Self::Context) {
        let name = msg.handle.name().to_string();
        let pending = self
            .replacing
            .get(&name)
            .is_some_and(|(_, p)| Arc::ptr_eq(p, &msg.handle));
        if pending {
            if let Some((_, fresh)) = self.replacing.remove(&name) {
                fresh.batcher.do_send(RetireModel);
            }
            warn!(model = %name, reason = %msg.reason, "load abandoned; the current model keeps serving");
            return;
        }
        let serving = self
            .plans
            .get(&name)
            .is_some_and(|p| Arc::ptr_eq(&p.handle, &msg.handle));
        if serving && !msg.handle.is_ready() {
            self.remove(&name);
            self.set_load_error(&name, Some(msg.reason.clone()));
            warn!(model = %name, reason = %msg.reason, "load failed; model removed");
        }
    }
}

impl Handler<UnloadModel> for Supervisor {
    type Result = Result<(), LifecycleError>;

    fn handle(&mut self, msg: UnloadModel, _ctx: &mut Self::Context) -> Self::Result {
        repository::check_name(&msg.model)
            .map_err(|e| LifecycleError::InvalidName(e.to_string()))?;
        let version = self
            .plans
            .get(&msg.model)
            .map(|p| p.handle.spec.version.clone());
        if self.remove(&msg.model) {
            self.set_unloaded(&msg.model, version);
            Ok(())
        } else {
            Err(LifecycleError::UnknownModel(msg.model))
        }
    }
}
