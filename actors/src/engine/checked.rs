//! An engine factory that checks a model's `[input]` and `[output]` tables
//! against the signature of what it loads, so a `model.toml` that does not
//! fit its model fails the replica's load with the reason (shown in stats
//! and health) instead of failing every request.

use std::sync::Arc;

use super::{Engine, EngineFactory, LoadTarget};
use crate::error::EngineError;
use crate::processing::{self, InputProcessing, OutputProcessing};
use crate::repository::ModelSettings;

/// Wraps `inner` with the check when the settings declare any processing.
pub fn checked_factory(
    inner: Arc<dyn EngineFactory>,
    settings: &ModelSettings,
) -> Arc<dyn EngineFactory> {
    if settings.input == InputProcessing::Tensor && settings.output == OutputProcessing::Tensor {
        return inner;
    }
    Arc::new(CheckedFactory {
        inner,
        input: settings.input.clone(),
        output: settings.output.clone(),
    })
}

struct CheckedFactory {
    inner: Arc<dyn EngineFactory>,
    input: InputProcessing,
    output: OutputProcessing,
}

impl EngineFactory for CheckedFactory {
    fn load(&self, target: &LoadTarget) -> Result<Box<dyn Engine>, EngineError> {
        let engine = self.inner.load(target)?;
        processing::fits(&self.input, &self.output, engine.signature()).map_err(|why| {
            EngineError::Load(format!("model.toml does not fit the model: {why}"))
        })?;
        Ok(engine)
    }

    fn device_memory_mb(&self, device: crate::device::Device) -> Option<u64> {
        self.inner.device_memory_mb(device)
    }
}
