//! The supervisor: reads the model repository, asks the resource budget for
//! a reservation before each replica starts, spawns each model's batcher and
//! replicas, and answers snapshots for stats and health. Scaling, reload and
//! loading or unloading models live in the `lifecycle` module, which builds
//! on this one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient,
    ResponseFuture, WrapFuture,
};
use tracing::{error, info, warn};

use crate::arbiter::{Decisions, ResidencyConfig};
use crate::batcher::{reserve_and_attach, AttachReplicaRequest, Batcher, IfRefused};
use crate::device::{DeviceSetup, GpuInventory};
use crate::engine::checked::checked_factory;
use crate::engine::EngineProvider;
use crate::memory::{GetMemorySnapshot, MemoryBudget, MemoryConfig, MemorySnapshot};
use crate::messages::{BatcherSnapshot, GetBatcherSnapshot, ModelDemanded};
use crate::model::{BatcherAddr, ModelHandle, ModelState, Residency};
use crate::observer::{BatchObserver, ResidencyDecision};
use crate::readiness::Readiness;
use crate::repository::{self, LoadError, ModelSpec};
use crate::usage::LearnedFootprints;

/// The models being served, by name; read on every request.
pub type ModelRegistry = Arc<RwLock<BTreeMap<String, Arc<ModelHandle>>>>;

/// What the supervisor needs to start serving.
pub struct SupervisorConfig {
    pub models_dir: PathBuf,
    pub memory: MemoryConfig,
    /// The GPUs replicas may be placed on (NVML on a real machine).
    pub gpus: Arc<dyn GpuInventory>,
    pub provider: Arc<dyn EngineProvider>,
    /// Told about every batch (metrics).
    pub observer: Arc<dyn BatchObserver>,
    /// How residency is decided (how long a replica stays at least).
    pub residency: ResidencyConfig,
}

/// The running actor system, as the service holds it.
#[derive(Clone)]
pub struct Serving {
    pub supervisor: Addr<Supervisor>,
    pub registry: ModelRegistry,
    /// Readiness changes, to wait on.
    pub readiness: Readiness,
    /// Repository folders that could not be served, and why.
    pub load_errors: LoadErrors,
    /// Models unloaded on request, with the version they served: the
    /// repository index keeps listing them (`UNAVAILABLE`) until loaded.
    pub unloaded: UnloadedModels,
    /// The latest residency decisions (loads, evictions, scale-downs).
    pub decisions: Decisions,
}

/// Repository folders that could not be served; replaced on every reload.
pub type LoadErrors = Arc<RwLock<Vec<LoadError>>>;

/// Unloaded models by name, with the version each served.
pub type UnloadedModels = Arc<RwLock<BTreeMap<String, String>>>;

impl Serving {
    /// Looks a model up by name.
    pub fn model(&self, name: &str) -> Option<Arc<ModelHandle>> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every served model, by name.
    pub fn models(&self) -> Vec<Arc<ModelHandle>> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// The supervisor actor.
pub struct Supervisor {
    pub(crate) models_dir: PathBuf,
    pub(crate) provider: Arc<dyn EngineProvider>,
    pub(crate) observer: Arc<dyn BatchObserver>,
    pub(crate) budget: Addr<MemoryBudget>,
    pub(crate) registry: ModelRegistry,
    /// Told when a model joins or leaves the registry (and, through each
    /// model's state, when one turns ready or stops being ready).
    pub(crate) readiness: Readiness,
    pub(crate) load_errors: LoadErrors,
    pub(crate) unloaded: UnloadedModels,
    /// The replicas each served model should have, by name.
    pub(crate) plans: BTreeMap<String, ReplicaPlan>,
    /// Next replica id per model name, never reused: a replacement or a
    /// reloaded model gets new ids, so its reservations (`model/id`) never
    /// collide with those of an instance still draining.
    pub(crate) issued_ids: BTreeMap<String, usize>,
    /// Replacements started but not yet serving, by model name: the spec
    /// they serve and their handle. A newer one supersedes (and retires) it.
    pub(crate) replacing: BTreeMap<String, (ModelSpec, Arc<ModelHandle>)>,
    started: Instant,
    /// Where batchers and handles ask for a model to be loaded (this actor).
    pub(crate) demands: Recipient<ModelDemanded>,
    /// Residency: the policy's settings, state and latest decisions.
    pub(crate) residency: crate::arbiter::Arbiter,
    /// Each model's scale-up and scale-down state.
    pub(crate) scaling: crate::autoscale::ScalingStates,
    /// Footprints measured across models: opening bids for the unmeasured.
    pub(crate) footprints: LearnedFootprints,
}

/// Which replica ids a model has (started, loading or refused).
pub(crate) struct ReplicaPlan {
    pub handle: Arc<ModelHandle>,
    pub ids: Vec<usize>,
}

impl ReplicaPlan {
    /// A plan of the replicas `ids`.
    pub fn new(handle: Arc<ModelHandle>, ids: Vec<usize>) -> ReplicaPlan {
        handle.state.set_desired_replicas(ids.len());
        ReplicaPlan { handle, ids }
    }
}

impl Supervisor {
    /// Reads the repository (off the async threads) and starts the
    /// supervisor, which then starts every model. Fails only when the
    /// repository folder cannot be read; bad models are reported, not fatal.
    pub async fn start(config: SupervisorConfig) -> Result<Serving, String> {
        let dir = config.models_dir.clone();
        let scan = tokio::task::spawn_blocking(move || repository::scan(&dir))
            .await
            .map_err(|e| format!("repository scan failed: {e}"))??;
        for e in &scan.errors {
            error!(model = %e.model, error = %e.error, "model not loaded");
        }
        for skipped in &scan.skipped {
            warn!(folder = %skipped.model, reason = %skipped.error, "repository folder is not a model");
        }
        let setup = DeviceSetup {
            inventory: config.gpus.clone(),
            support: config.provider.gpu_support(),
        };
        let mut budget = MemoryBudget::from_config(&config.memory, setup);
        if let Some(read) = config.provider.process_memory() {
            budget = budget.showing_process_growth(read);
        }
        let budget = budget.start();
        let registry = ModelRegistry::default();
        let readiness = Readiness::default();
        let load_errors = Arc::new(RwLock::new(scan.errors));
        let unloaded = UnloadedModels::default();
        let decisions = Decisions::default();
        let observer = config.observer;
        let (models_dir, provider) = (config.models_dir, config.provider);
        let (served, ready, failed, gone, told) = (
            registry.clone(),
            readiness.clone(),
            load_errors.clone(),
            unloaded.clone(),
            decisions.clone(),
        );
        let residency = config.residency;
        let footprints = LearnedFootprints::default();
        let supervisor = Supervisor::create(move |ctx| {
            let demands = ctx.address().recipient();
            // Every model is registered (not ready) before anyone can ask,
            // so health is never "all ready" over a half-read repository.
            let mut plans = BTreeMap::new();
            let mut issued_ids = BTreeMap::new();
            {
                let mut models = served.write().unwrap_or_else(|e| e.into_inner());
                for spec in scan.models {
                    let replicas = spec.settings.replicas;
                    let handle = register_model(
                        spec,
                        observer.clone(),
                        &budget,
                        &ready,
                        &demands,
                        &footprints,
                    );
                    models.insert(handle.spec.name.clone(), handle.clone());
                    issued_ids.insert(handle.spec.name.clone(), replicas);
                    let ids = (0..replicas).collect();
                    plans.insert(handle.spec.name.clone(), ReplicaPlan::new(handle, ids));
                }
            }
            Supervisor {
                models_dir,
                provider,
                observer: observer.clone(),
                budget,
                registry: served,
                readiness: ready,
                load_errors: failed,
                unloaded: gone,
                plans,
                issued_ids,
                replacing: BTreeMap::new(),
                started: Instant::now(),
                demands,
                residency: crate::arbiter::Arbiter::new(residency, told, observer),
                scaling: Default::default(),
                footprints,
            }
        });
        Ok(Serving {
            supervisor,
            registry,
            readiness,
            load_errors,
            unloaded,
            decisions,
        })
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    /// Starts what fits, pinned models (`keep_loaded`) first; a model that
    /// does not fit stays out of memory until a request asks for it.
    fn started(&mut self, ctx: &mut Self::Context) {
        let mut starts: Vec<(Arc<ModelHandle>, Vec<usize>)> = self
            .plans
            .values()
            .map(|p| (p.handle.clone(), p.ids.clone()))
            .collect();
        starts.sort_by_key(|(handle, _)| !handle.spec.settings.keep_loaded);
        let files = starts
            .iter()
            .map(|(h, _)| (h.spec.onnx_path.clone(), h.spec.sha256.clone()))
            .collect();
        crate::engine::mapped_weights::prepare_in_background(files);
        let budget = self.budget.clone();
        let provider = self.provider.clone();
        let load = async move {
            let mut cold = Vec::new();
            for (handle, ids) in starts {
                let wanted = ids.len();
                let refused = start_replicas(
                    &handle,
                    ids,
                    &budget,
                    provider.as_ref(),
                    IfRefused::StayCold,
                )
                .await;
                // Its footprints measured before the next reserves: what
                // fits is judged on what replicas take, not on estimates.
                settled(&handle, wanted - refused.len()).await;
                cold.push((handle.spec.name.clone(), refused));
            }
            cold
        };
        ctx.wait(load.into_actor(self).map(|cold, act, ctx| {
            for (model, refused) in cold {
                if let Some(plan) = act.plans.get_mut(&model) {
                    plan.ids.retain(|id| !refused.contains(id));
                }
            }
            info!("all models started");
            act.start_residency_ticks(ctx);
        }));
    }
}

/// Waits (at most [`STARTUP_LOAD_LIMIT`]) until `placed` replicas of
/// `handle` are ready, or it failed or stayed out of memory.
async fn settled(handle: &ModelHandle, placed: usize) {
    let deadline = Instant::now() + STARTUP_LOAD_LIMIT;
    while Instant::now() < deadline {
        let done = match handle.state.residency() {
            Residency::Starting | Residency::Loading => false,
            Residency::Resident => {
                handle.state.ready_replicas() >= placed || handle.state.loading_replicas() == 0
            }
            Residency::Cold | Residency::Failed(_) => true,
        };
        if done {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// How long startup waits for one model's load before it starts the next.
const STARTUP_LOAD_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Creates a model's batcher and handle; no replica yet.
pub(crate) fn register_model(
    spec: ModelSpec,
    observer: Arc<dyn BatchObserver>,
    budget: &Addr<MemoryBudget>,
    readiness: &Readiness,
    demands: &Recipient<ModelDemanded>,
    footprints: &LearnedFootprints,
) -> Arc<ModelHandle> {
    let state = Arc::new(ModelState::new(readiness.clone(), footprints.clone()));
    let batcher = Batcher::new(spec.name.clone(), &spec.settings, state.clone(), observer)
        .with_budget(budget.clone(), spec.memory_mb, spec.file_mb)
        .with_supervisor(demands.clone())
        .start();
    Arc::new(ModelHandle {
        spec,
        state,
        batcher: BatcherAddr::new(&batcher),
        supervisor: Some(demands.clone()),
    })
}

/// Starts each replica of a model that the memory budget grants; a refused
/// one becomes what `if_refused` says. Returns the ids not kept.
pub(crate) async fn start_replicas(
    handle: &ModelHandle,
    ids: Vec<usize>,
    budget: &Addr<MemoryBudget>,
    provider: &dyn EngineProvider,
    if_refused: IfRefused,
) -> Vec<usize> {
    let mut refused = Vec::new();
    let spec = &handle.spec;
    let factory = checked_factory(provider.factory(spec), &spec.settings);
    info!(model = %spec.name, version = %spec.version, replicas = ids.len(), "starting replicas");
    for id in ids {
        let request = AttachReplicaRequest {
            id,
            owner: format!("{}/{id}", spec.name),
            mb: handle.state.reservation_mb(spec).0,
            headroom_mb: handle.state.load_headroom_mb(spec),
            placement: spec.settings.placement(),
            factory: factory.clone(),
            warmup: spec.settings.warmup,
            retry: false,
            if_refused,
            configured: handle.state.reservation_mb(spec).1,
        };
        if !reserve_and_attach(handle.batcher.clone(), budget.clone(), request).await {
            refused.push(id);
        }
    }
    refused
}

/// One model's view for stats.
#[derive(Debug, Clone)]
pub struct ModelSnapshot {
    pub name: String,
    pub version: String,
    pub ready_replicas: usize,
    pub memory_mb_per_replica: u64,
    pub batcher: BatcherSnapshot,
    pub residency: Residency,
    /// `keep_loaded`: never evicted.
    pub pinned: bool,
    /// Replicas it keeps when idle (`min_replicas`, else `replicas`).
    pub min_replicas: usize,
    /// Replicas it may grow to under a backlog.
    pub max_replicas: usize,
    /// Requests it took since it last loaded.
    pub requests_since_load: u64,
    /// Its demand: requests, each counted half after
    /// [`crate::usage::DEMAND_HALF_LIFE`] (its eviction frequency).
    pub demand: f64,
    /// How long a load and warmup takes ([`crate::usage::ModelUsage::load_time`]).
    pub load_ms: Option<u64>,
    /// Seconds since its last request; `None` before the first.
    pub idle_s: Option<f64>,
}

/// Everything stats and health need, taken in one go.
#[derive(Debug, Clone)]
pub struct ServerSnapshot {
    pub uptime_s: f64,
    pub models: Vec<ModelSnapshot>,
    pub load_errors: Vec<LoadError>,
    pub memory: MemorySnapshot,
    /// `memory.min_residency_ms`.
    pub min_residency_ms: u64,
    /// The latest residency decisions, oldest first.
    pub decisions: Vec<ResidencyDecision>,
}

/// Asks the supervisor for a [`ServerSnapshot`].
#[derive(Message)]
#[rtype(result = "Result<ServerSnapshot, String>")]
pub struct GetSnapshot;

impl Handler<GetSnapshot> for Supervisor {
    type Result = ResponseFuture<Result<ServerSnapshot, String>>;

    fn handle(&mut self, _: GetSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        let handles: Vec<Arc<ModelHandle>> = self
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let budget = self.budget.clone();
        let load_errors = self
            .load_errors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let uptime_s = self.started.elapsed().as_secs_f64();
        let min_residency_ms = self.residency.min_residency().as_millis() as u64;
        let decisions = self.residency.decisions().clone();
        Box::pin(async move {
            let mut models = Vec::with_capacity(handles.len());
            for handle in handles {
                // A model replaced or removed a moment ago may have retired
                // since the registry was read: it is simply not reported.
                let Ok(batcher) = handle.batcher.send(GetBatcherSnapshot).await else {
                    continue;
                };
                let usage = &handle.state.usage;
                models.push(ModelSnapshot {
                    residency: handle.state.residency(),
                    pinned: handle.spec.settings.keep_loaded,
                    min_replicas: handle.spec.settings.idle_replicas(),
                    max_replicas: handle.spec.settings.most_replicas(),
                    requests_since_load: usage.requests_since_load(),
                    demand: usage.demand(),
                    load_ms: usage.load_time().map(|t| t.as_millis() as u64),
                    idle_s: usage.idle_for().map(|t| t.as_secs_f64()),
                    name: handle.spec.name.clone(),
                    version: handle.spec.version.clone(),
                    ready_replicas: handle.state.ready_replicas(),
                    memory_mb_per_replica: handle.state.reservation_mb(&handle.spec).0,
                    batcher,
                });
            }
            let memory = budget
                .send(GetMemorySnapshot)
                .await
                .map_err(|e| format!("memory budget did not answer: {e}"))?;
            Ok(ServerSnapshot {
                uptime_s,
                models,
                load_errors,
                memory,
                min_residency_ms,
                // Read last: every decision behind the states read above.
                decisions: decisions.latest(),
            })
        })
    }
}
