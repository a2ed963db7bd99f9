//! A model's settings, as `model.toml` (or a load's overrides) gives them:
//! parsed, defaulted and checked, each error naming its key.

use std::path::Path;

use serde::Deserialize;

use crate::device::{DevicePreference, Placement};
use crate::priority::Priority;
use crate::processing::{self, InputProcessing, OutputProcessing};
use crate::reshape::TensorReshape;
use crate::sequence::SequenceSettings;
use crate::warmup_sample::WarmupSample;

/// Per-model settings from `model.toml`; every key is optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Replicas (ONNX Runtime sessions) to run while the model is resident.
    pub replicas: usize,
    /// Replicas an idle model keeps after `downscale_delay_s`; `None` means
    /// `replicas` (no idle scale-down). 0 lets an idle model leave memory
    /// entirely: its next request loads it again.
    pub min_replicas: Option<usize>,
    /// Replicas it may grow to while its queue stays longer than its
    /// replicas drain; `None` means `replicas` (no scale-up).
    pub max_replicas: Option<usize>,
    /// Seconds the queue must stay that long before a replica is added.
    pub upscale_delay_s: u64,
    /// Seconds without a request after which an idle model gives replicas
    /// back, down to `min_replicas` (and without a backlog, down from
    /// above `replicas`).
    pub downscale_delay_s: u64,
    /// Pinned: loaded first at startup and never evicted to make room for
    /// another model.
    pub keep_loaded: bool,
    /// Most items in one batch.
    pub max_batch_size: usize,
    /// How long the oldest request may wait for a batch to fill.
    pub batch_window_ms: u64,
    /// The time the model should answer in, server side: batches are
    /// sized so that the oldest request's wait plus the run stays within
    /// it, and a request predicted to finish later is refused at once
    /// (429) instead of queued. `None`: no target.
    pub latency_target_ms: Option<u64>,
    /// ONNX Runtime intra-op threads of a pool of each replica's own;
    /// `None` (the default) draws on the process's shared pool.
    pub intra_op_threads: Option<usize>,
    /// Memory reserved per replica; estimated from the file size when absent.
    pub memory_mb: Option<u64>,
    /// Most requests waiting in the model's queue.
    pub queue_capacity: usize,
    /// Warmup inferences a replica runs before it is ready.
    pub warmup: u32,
    /// A request waiting this long is served as `high` priority.
    pub max_priority_wait_ms: u64,
    /// Memory one batch item needs; measured by warmup when absent (where
    /// the engine can tell). Caps batches at what the free budget holds.
    pub memory_per_item_mb: Option<u64>,
    /// Where replicas run: `auto` (a GPU when one is usable, else the
    /// CPU), `cpu` or `gpu`.
    pub device: DevicePreference,
    /// The GPU indices replicas may use; every visible one when absent.
    pub gpus: Option<Vec<u32>>,
    /// `[input]`: how an uploaded file becomes the input tensor.
    pub input: InputProcessing,
    /// `[output]`: what the answer holds.
    pub output: OutputProcessing,
    /// `[sequence]`: a stateful model, served sequence by sequence.
    pub sequence: Option<SequenceSettings>,
    /// Tensors clients see in another shape than the model's (Triton's
    /// `reshape`, from a `config.pbtxt`; no `model.toml` key).
    #[serde(skip)]
    pub reshape: Vec<TensorReshape>,
    /// The model's own warmup samples (Triton's `model_warmup`, from a
    /// `config.pbtxt`), run in place of `warmup` rounds on zeros.
    #[serde(skip)]
    pub warmup_samples: Vec<WarmupSample>,
    /// The deadline of a request that sets none, and whether one may set
    /// its own (Triton's `default_queue_policy` timeout, from a
    /// `config.pbtxt`); `None`: the server's `request_timeout_ms`, and
    /// requests may set theirs.
    #[serde(skip)]
    pub queue_timeout: Option<QueueTimeout>,
    /// Priority levels requests may ask for (Triton's `priority_levels`,
    /// 1-3, from a `config.pbtxt`) and the level of one that asks for none;
    /// `None`: all three, `normal` by default.
    #[serde(skip)]
    pub priority_levels: Option<(usize, Priority)>,
    /// The model takes no batch dimension whatever its shapes (Triton's
    /// `max_batch_size: 0`): each request runs alone, its tensors as sent.
    #[serde(skip)]
    pub unbatched: bool,
    /// Inputs a request may leave out (Triton's `optional: true`, from a
    /// `config.pbtxt`): the model runs on its own initializer for them.
    #[serde(skip)]
    pub optional_inputs: Vec<String>,
}

/// A model's own request timeout (Triton's queue policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTimeout {
    pub default: std::time::Duration,
    /// A request may ask for a shorter deadline, never a longer one.
    pub allow_override: bool,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            replicas: 1,
            min_replicas: None,
            max_replicas: None,
            upscale_delay_s: 5,
            downscale_delay_s: 300,
            keep_loaded: false,
            max_batch_size: 8,
            batch_window_ms: 100,
            latency_target_ms: None,
            intra_op_threads: None,
            memory_mb: None,
            queue_capacity: 1000,
            warmup: 1,
            max_priority_wait_ms: 1000,
            memory_per_item_mb: None,
            device: DevicePreference::Auto,
            gpus: None,
            input: InputProcessing::Tensor,
            output: OutputProcessing::Tensor,
            sequence: None,
            reshape: Vec::new(),
            warmup_samples: Vec::new(),
            queue_timeout: None,
            priority_levels: None,
            unbatched: false,
            optional_inputs: Vec::new(),
        }
    }
}

impl ModelSettings {
    /// Parses and checks a `model.toml` text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, String> {
        let settings: ModelSettings = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let line_no = text[..span.start].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
                format!(" (line {line_no}: `{line}`)")
            });
            format!(
                "{}: {}{}",
                file.display(),
                e.message(),
                at.unwrap_or_default()
            )
        })?;
        settings
            .validate()
            .map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(settings)
    }

    /// Checks settings however they were read; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        self.check()
            .map_err(|(key, why)| (key, why.to_string()))
            .and_then(|()| processing::check(&self.input, &self.output))
            .map_err(|(key, why)| format!("key `{key}` {why}"))
    }

    /// The settings of `text` with `overrides` applied: top-level keys
    /// replace the file's, tables (`[input]`, `[output]`) merge key by key.
    /// Errors name the overridden file.
    pub fn with_overrides(
        text: &str,
        overrides: &toml::Table,
        file: &Path,
    ) -> Result<Self, String> {
        let mut merged: toml::Table =
            toml::from_str(text).map_err(|e| format!("{}: {}", file.display(), e.message()))?;
        for (key, value) in overrides {
            match (merged.get_mut(key), value) {
                (Some(toml::Value::Table(table)), toml::Value::Table(patch)) => {
                    table.extend(patch.clone());
                }
                _ => {
                    merged.insert(key.clone(), value.clone());
                }
            }
        }
        let label = format!("{} with the load's config override", file.display());
        ModelSettings::parse(&merged.to_string(), Path::new(&label))
    }

    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_batch_size == 0 {
            return Err(("max_batch_size", "must be at least 1"));
        }
        if self.min_replicas.is_some_and(|min| min > self.replicas) {
            return Err(("min_replicas", "must be at most `replicas`"));
        }
        if self.keep_loaded && self.min_replicas == Some(0) {
            return Err((
                "min_replicas",
                "cannot be 0 with keep_loaded = true (a pinned model stays loaded)",
            ));
        }
        if self.max_replicas.is_some_and(|max| max < self.replicas) {
            return Err(("max_replicas", "must be at least `replicas`"));
        }
        if self.max_replicas.is_some_and(|max| max > 64) {
            return Err(("max_replicas", "must be at most 64"));
        }
        if self.upscale_delay_s == 0 || self.upscale_delay_s > 3600 {
            return Err(("upscale_delay_s", "must be between 1 and 3600"));
        }
        if self.downscale_delay_s == 0 || self.downscale_delay_s > 86_400 {
            return Err(("downscale_delay_s", "must be between 1 and 86400"));
        }
        if self
            .latency_target_ms
            .is_some_and(|ms| ms == 0 || ms > 3_600_000)
        {
            return Err(("latency_target_ms", "must be between 1 and 3600000"));
        }
        if self.intra_op_threads == Some(0) {
            return Err(("intra_op_threads", "must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(("queue_capacity", "must be at least 1"));
        }
        if self.batch_window_ms > 60_000 {
            return Err(("batch_window_ms", "must be at most 60000"));
        }
        if self.memory_mb == Some(0) {
            return Err(("memory_mb", "must be at least 1 when set"));
        }
        if self.memory_per_item_mb == Some(0) {
            return Err(("memory_per_item_mb", "must be at least 1 when set"));
        }
        if let Some(sequence) = &self.sequence {
            if sequence.max_sequences == 0 {
                return Err(("sequence.max_sequences", "must be at least 1"));
            }
            if sequence.max_sequence_idle_ms == 0 {
                return Err(("sequence.max_sequence_idle_ms", "must be at least 1"));
            }
            let names: Vec<&str> = sequence.server_inputs().collect();
            if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
                return Err(("sequence", "names one input twice"));
            }
        }
        if let Some(gpus) = &self.gpus {
            if gpus.is_empty() {
                return Err(("gpus", "must list at least one GPU index when set"));
            }
            if self.device == DevicePreference::Cpu {
                return Err(("gpus", "cannot be set with device = \"cpu\""));
            }
            if (1..gpus.len()).any(|i| gpus[..i].contains(&gpus[i])) {
                return Err(("gpus", "lists a GPU twice"));
            }
        }
        Ok(())
    }

    /// The priority a request runs at: what it asked for (within the
    /// model's levels) or the model's default.
    pub fn priority_of(&self, asked: Option<Priority>) -> Result<Priority, crate::InferError> {
        match (asked, self.priority_levels) {
            (None, Some((_, default))) => Ok(default),
            (None, None) => Ok(Priority::default()),
            (Some(p), Some((levels, _))) if p.rank() >= levels => {
                Err(crate::InferError::InvalidInput(format!(
                    "priority {} is past the model's {levels} priority level(s)",
                    p.rank() + 1
                )))
            }
            (Some(p), _) => Ok(p),
        }
    }

    /// Replicas an idle model keeps (`min_replicas`, else `replicas`).
    pub fn idle_replicas(&self) -> usize {
        self.min_replicas
            .unwrap_or(self.replicas)
            .min(self.replicas)
    }

    /// Replicas it may grow to (`max_replicas`, else `replicas`).
    pub fn most_replicas(&self) -> usize {
        self.max_replicas
            .unwrap_or(self.replicas)
            .max(self.replicas)
    }

    /// Where the model's replicas may be placed.
    pub fn placement(&self) -> Placement {
        Placement {
            preference: self.device,
            gpus: self.gpus.clone(),
        }
    }
}
