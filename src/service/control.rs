//! Model control as Triton clients expect it: a load answers once the model
//! serves (or with the reason it cannot), an unload takes the model out of
//! service while the repository index keeps listing it.
//!
//! The supervisor starts a load and names the instance that will serve; the
//! wait here watches that instance: ready and registered is done; every
//! replica failed or refused by the memory budget, or no ready replica
//! within [`LOAD_TIMEOUT`], abandons the load (a new model is removed and
//! reported failed, a replacement is dropped and the current one keeps
//! serving) and answers the reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_actors::batcher::{GetBatcherSnapshot, ReplicaState};
use gantry_actors::lifecycle::{
    AbandonLoad, Change, LifecycleError, LoadModel, Reload, ReloadReport, ScaleModel, UnloadModel,
};
use gantry_actors::repository::LoadOverrides;
use gantry_actors::supervisor::GetSnapshot;
use gantry_actors::ModelHandle;

use super::InferenceService;
use crate::error::ApiError;

/// Longest a load waits for its first ready replica (as long as a
/// replacement may take in the supervisor).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// How often a waiting load looks at its instance.
const POLL: Duration = Duration::from_millis(20);

/// How long a load whose replicas the memory budget refused waits for room
/// (an instance draining gives its memory back within moments, idle replicas
/// of other models are evicted for it) when the model could fit at all.
const REFUSED_GRACE: Duration = Duration::from_secs(10);

impl InferenceService {
    /// Loads (or reloads) `model`, with `overrides` of its `model.toml`
    /// keys, and answers when it serves.
    pub async fn load_model(
        &self,
        model: &str,
        overrides: Option<LoadOverrides>,
    ) -> Result<Change, LifecycleError> {
        let loading = self
            .serving
            .supervisor
            .send(LoadModel {
                model: model.to_string(),
                overrides,
            })
            .await
            .map_err(|e| supervisor_gone(&e))?
            .map_err(|e| failed_to_load(model, e))?;
        self.wait_until_serving(&loading.handle).await?;
        Ok(loading.change)
    }

    /// Takes `model` out of service; what it queued is still answered.
    pub async fn unload_model(&self, model: &str) -> Result<(), LifecycleError> {
        self.serving
            .supervisor
            .send(UnloadModel {
                model: model.to_string(),
            })
            .await
            .map_err(|e| supervisor_gone(&e))?
    }

    /// Sets `model`'s replicas; answers the count before and after.
    pub async fn scale(&self, model: &str, replicas: usize) -> Result<(usize, usize), ApiError> {
        Ok(self
            .serving
            .supervisor
            .send(ScaleModel {
                model: model.to_string(),
                replicas,
            })
            .await
            .map_err(|e| ApiError::Internal(super::supervisor_gone(&e)))??)
    }

    /// Reloads the configuration and the model repository: what changed,
    /// and what failed to load.
    pub async fn reload(&self) -> Result<ReloadReport, ApiError> {
        Ok(self
            .serving
            .supervisor
            .send(Reload)
            .await
            .map_err(|e| ApiError::Internal(super::supervisor_gone(&e)))??)
    }

    async fn wait_until_serving(&self, handle: &Arc<ModelHandle>) -> Result<(), LifecycleError> {
        let name = handle.name();
        let deadline = Instant::now() + LOAD_TIMEOUT;
        let mut refused_since: Option<Instant> = None;
        loop {
            let registered = self
                .serving
                .model(name)
                .is_some_and(|m| Arc::ptr_eq(&m, handle));
            if handle.state.desired_replicas() == 0 || (handle.is_ready() && registered) {
                return Ok(());
            }
            let superseded = || {
                LifecycleError::Repository(format!(
                    "the load of model '{name}' was superseded by another load or unload"
                ))
            };
            let snapshot = handle
                .batcher
                .send(GetBatcherSnapshot)
                .await
                .map_err(|_| superseded())?;
            let (mut failed, mut refused) = (Vec::new(), Vec::new());
            for replica in &snapshot.replicas {
                match (&replica.state, &replica.last_error) {
                    (ReplicaState::Ready, _) => {}
                    (ReplicaState::Refused(why), _) => refused.push(why.clone()),
                    (_, Some(why)) => failed.push(why.clone()),
                    (_, None) => {}
                }
            }
            let stuck = !snapshot.replicas.is_empty()
                && failed.len() + refused.len() == snapshot.replicas.len();
            if stuck && failed.is_empty() {
                // Asked for by name: idle replicas of other models make room.
                handle.demand();
                let since = *refused_since.get_or_insert_with(Instant::now);
                if since.elapsed() < REFUSED_GRACE && self.could_fit(handle).await {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            } else {
                refused_since = None;
            }
            let reason = if stuck {
                let why = failed
                    .first()
                    .or(refused.first())
                    .cloned()
                    .unwrap_or_default();
                Some(format!("failed to load '{name}', {why}"))
            } else if Instant::now() >= deadline {
                Some(format!(
                    "model '{name}' had no ready replica within {} s",
                    LOAD_TIMEOUT.as_secs()
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                self.serving.supervisor.do_send(AbandonLoad {
                    handle: handle.clone(),
                    reason: reason.clone(),
                });
                return Err(LifecycleError::Repository(reason));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl InferenceService {
    /// True when one replica of `handle` fits some device's whole budget
    /// of memory, so a refusal may pass once others give room.
    async fn could_fit(&self, handle: &ModelHandle) -> bool {
        let Ok(Ok(snapshot)) = self.serving.supervisor.send(GetSnapshot).await else {
            return false;
        };
        let memory = &snapshot.memory;
        let spec = &handle.spec;
        // Only a configured figure is refused for good when larger than a
        // device; an estimate or a measurement is cut to the device.
        let (needs, configured) = handle.state.reservation_mb(spec);
        !configured || memory.devices.iter().any(|d| needs <= d.total_mb)
    }
}

/// A load refused before it started, in Triton's words ("failed to load
/// '<model>', ..."), which clients look for.
fn failed_to_load(model: &str, e: LifecycleError) -> LifecycleError {
    let worded = |why: String| format!("failed to load '{model}', {why}");
    match e {
        LifecycleError::Repository(why) => LifecycleError::Repository(worded(why)),
        LifecycleError::InvalidOverride(why) => LifecycleError::InvalidOverride(worded(why)),
        LifecycleError::UnknownModel(_) => LifecycleError::NotInRepository(worded(
            "the model repository holds no such model".into(),
        )),
        other => other,
    }
}

fn supervisor_gone(e: &actix::MailboxError) -> LifecycleError {
    LifecycleError::Repository(super::supervisor_gone(e))
}
