//! What the service says about its models, whatever the protocol: lookup by
//! name and version, the tensors clients see, the repository index (served,
//! unloaded, failed), Triton's configuration and statistics JSON (HTTP
//! answers them; gRPC reads them into its messages), and the protocol
//! extensions served.

use std::sync::Arc;
use std::time::Instant;

use gantry_actors::batcher::GetBatcherSnapshot;
use gantry_actors::model::Residency;
use gantry_actors::repository::LoadOverrides;
use gantry_actors::signature::TensorSpec;
use gantry_actors::{InferError, ModelHandle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::InferenceService;
use crate::error::ApiError;
use crate::triton::config_json::model_config;
use crate::triton::config_override::overrides_from_config;

/// The protocol extensions `GET /v2` (and gRPC's ServerMetadata) lists:
/// those of Triton's that Gantry serves.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "statistics",
    "system_shared_memory",
    "classification",
    "sequence",
];

/// A model in a v2 path, with the version when the path names one.
#[derive(Deserialize)]
pub struct ModelPath {
    pub model: String,
    pub version: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// `READY`, `UNAVAILABLE` (no ready replica, or unloaded) or `FAILED`
    /// (cannot load).
    pub state: &'static str,
    pub reason: String,
}

/// A model as the v2 protocol describes it (`GET /v2/models/{m}`, gRPC's
/// ModelMetadata).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// One tensor a client sends or gets.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// The tensors clients see: those the server fills or keeps (a sequence
/// model's control and state tensors) are left out, as `hidden` says.
fn tensor_metadata(specs: &[TensorSpec], hidden: impl Fn(&str) -> bool) -> Vec<TensorMetadata> {
    specs
        .iter()
        .filter(|s| !hidden(&s.name))
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.dtype.as_str(),
            shape: s.shape_i64(),
        })
        .collect()
}

/// The settings override a load's `parameters` ask for (HTTP and gRPC);
/// a refusal says "failed to load '<model>', ..." as Triton's does.
pub fn overrides_from_parameters(
    model: &str,
    parameters: Map<String, Value>,
) -> Result<Option<LoadOverrides>, ApiError> {
    load_overrides(model, parameters)
        .map_err(|why| ApiError::BadRequest(format!("failed to load '{model}', {why}")))
}

fn load_overrides(
    model: &str,
    parameters: Map<String, Value>,
) -> Result<Option<LoadOverrides>, String> {
    let mut overrides = None;
    let both = |text: &str| -> Result<LoadOverrides, String> {
        let settings = overrides_from_config(model, text)?;
        // overrides_from_config has checked that it is a JSON object.
        let triton = serde_json::from_str(text).unwrap_or_default();
        Ok(LoadOverrides { settings, triton })
    };
    for (key, value) in parameters {
        match (key.as_str(), value) {
            ("config", Value::String(text)) => overrides = Some(both(&text)?),
            ("config", value @ Value::Object(_)) => overrides = Some(both(&value.to_string())?),
            ("config", other) => {
                return Err(format!(
                    "parameters.config must be a JSON object (or its text), not {other}"
                ))
            }
            (key, _) if key.starts_with("file:") => {
                return Err(format!(
                    "parameters.{key}: loading model files sent with the request is not \
                     supported; put them in the model repository"
                ))
            }
            (key, _) => {
                return Err(format!(
                    "parameters.{key} is not a load parameter (config is)"
                ))
            }
        }
    }
    Ok(overrides)
}

impl InferenceService {
    /// The metadata of the model at `path`: its signature, read by its
    /// first replica (a model that never loaded is loaded first, within the
    /// default request timeout).
    pub async fn model_metadata(&self, path: &ModelPath) -> Result<ModelMetadata, ApiError> {
        let model = self.model_at(path)?;
        let deadline = Instant::now() + self.default_timeout;
        let signature = self.signature_of(&model, deadline).await?;
        let settings = &model.spec.settings;
        let sequence = settings.sequence.as_ref();
        let mut inputs = tensor_metadata(&signature.inputs, |name| {
            sequence.is_some_and(|seq| seq.fills_input(name))
        });
        let mut outputs = tensor_metadata(&signature.outputs, |name| {
            sequence.is_some_and(|seq| seq.keeps_output(name))
        });
        // A reshaped tensor is shown in the shape clients send or get.
        for r in &settings.reshape {
            let listed = if r.input { &mut inputs } else { &mut outputs };
            if let Some(tensor) = listed.iter_mut().find(|t| t.name == r.name) {
                tensor.shape = r
                    .batched
                    .then_some(-1)
                    .into_iter()
                    .chain(r.dims.clone())
                    .collect();
            }
        }
        Ok(ModelMetadata {
            name: model.name().to_string(),
            versions: vec![model.spec.version.clone()],
            platform: "onnxruntime_onnx",
            inputs,
            outputs,
        })
    }

    /// The model named in the path, checking the version when one is given.
    pub fn model_at(&self, path: &ModelPath) -> Result<Arc<ModelHandle>, ApiError> {
        let model = self.model(&path.model)?;
        match &path.version {
            Some(v) if *v != model.spec.version => Err(ApiError::NotFound(format!(
                "model '{}' has no version '{v}'; it serves version '{}'",
                path.model, model.spec.version
            ))),
            _ => Ok(model),
        }
    }

    /// Every model of the repository: served (ready or not), unloaded, failed.
    pub fn repository_index(&self) -> Vec<IndexEntry> {
        let serving = &self.serving;
        let mut entries: Vec<IndexEntry> = serving
            .models()
            .iter()
            .map(|m| IndexEntry {
                name: m.name().to_string(),
                version: m.spec.version.clone(),
                state: if m.is_servable() {
                    "READY"
                } else {
                    "UNAVAILABLE"
                },
                reason: match m.state.residency() {
                    Residency::Resident => String::new(),
                    Residency::Cold => "not in memory; loaded by its next request".into(),
                    Residency::Loading if m.is_servable() => "loading".into(),
                    Residency::Failed(reason) => reason,
                    Residency::Starting | Residency::Loading => "no ready replica".into(),
                },
            })
            .collect();
        let failed = serving
            .load_errors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unloaded = serving
            .unloaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        entries.extend(unloaded.into_iter().map(|(name, version)| IndexEntry {
            name,
            version,
            state: "UNAVAILABLE",
            reason: "unloaded".into(),
        }));
        entries.extend(failed.into_iter().map(|e| IndexEntry {
            name: e.model,
            version: String::new(),
            state: "FAILED",
            reason: e.error,
        }));
        entries
    }

    /// `{"model_stats": [...]}` in Triton's form: of the model at `path`, or of
    /// every served model (HTTP answers it; gRPC reads it into its message).
    pub fn statistics_json(&self, path: Option<&ModelPath>) -> Result<Value, ApiError> {
        let statistics = &self.metrics.statistics;
        let stats: Vec<_> = match path {
            Some(path) => {
                let model = self.model_at(path)?;
                vec![statistics.model_stats(model.name(), &model.spec.version)]
            }
            None => self
                .models()
                .iter()
                .map(|m| statistics.model_stats(m.name(), &m.spec.version))
                .collect(),
        };
        Ok(json!({ "model_stats": stats }))
    }

    /// The configuration of the model at `path`, in Triton's JSON form (HTTP
    /// answers it; gRPC reads it into its `ModelConfig` message).
    pub async fn config_json(&self, path: &ModelPath) -> Result<Value, ApiError> {
        let model = self.model_at(path)?;
        // The signature comes from a session: known once a replica has loaded.
        let signature = model
            .state
            .signature()
            .ok_or_else(|| InferError::ModelNotReady(model.name().to_string()))?;
        let snapshot = model
            .batcher
            .send(GetBatcherSnapshot)
            .await
            .map_err(|_| InferError::ModelNotReady(model.name().to_string()))?;
        let devices: Vec<_> = snapshot.replicas.iter().filter_map(|r| r.device).collect();
        Ok(model_config(&model, signature, &devices))
    }
}
