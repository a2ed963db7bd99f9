//! Model folders in Triton's layout: `<model>/config.pbtxt` (Triton's
//! `ModelConfig` in protobuf text format, read against the vendored
//! `model_config.proto`) beside version folders `<model>/<n>/model.onnx`.
//! A folder holding only version folders is read as an empty
//! configuration, as Triton completes one for ONNX models.
//!
//! Every field set in the file is either honoured or refused: the load
//! fails with a message naming the field ([`HONOURED`] lists the first
//! kind). The fields become [`ModelSettings`]: `max_batch_size`,
//! `instance_group` (`count` → replicas, `kind` → device, `gpus`),
//! `dynamic_batching` (`max_queue_delay_microseconds` → the batch window,
//! rounded up to whole milliseconds; none at all → no window, requests run
//! as they come; `default_queue_policy.max_queue_size` → the queue's
//! capacity), `sequence_batching` (control inputs, implicit state, idle
//! time), `parameters` (`intra_op_thread_count`), inputs' and outputs'
//! `reshape` ([`crate::reshape`]), `model_warmup` ([`crate::warmup_sample`];
//! files from the model's `warmup/` folder). Inputs and outputs (`dims`,
//! `format`, `label_filename`) are answered back in the model's
//! configuration as read.

mod settings;
mod text;
mod versions;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::model_settings::ModelSettings;
pub use text::{parse, parse_with, ParsedConfig, HONOURED};

/// The configuration file of a model folder in Triton's layout.
pub const CONFIG_FILE: &str = "config.pbtxt";

/// The model file in a version folder unless `default_model_filename`
/// names another.
const DEFAULT_MODEL_FILE: &str = "model.onnx";

/// A model folder in Triton's layout, read.
#[derive(Debug, Clone, PartialEq)]
pub struct TritonModel {
    pub settings: ModelSettings,
    /// The version served (its folder's number).
    pub version: u64,
    /// The model file in that version's folder.
    pub onnx_path: PathBuf,
    /// The labels file an output's `label_filename` names (in the model's
    /// folder), if any.
    pub labels_file: Option<PathBuf>,
    /// The configuration as read, in protobuf's JSON mapping (field names
    /// as in the `.proto`, fields left at their defaults absent).
    pub config: Value,
}

/// True when `folder` is in Triton's layout: it has a `config.pbtxt`, or
/// no `model.onnx`/`model.toml` of its own but a numbered version folder
/// holding a model file.
pub fn is_triton_folder(folder: &Path) -> bool {
    folder.join(CONFIG_FILE).is_file()
        || (!folder.join("model.onnx").exists()
            && !folder.join("model.toml").exists()
            && versions::version_folders(folder)
                .iter()
                .any(|(_, path)| path.join(DEFAULT_MODEL_FILE).is_file()))
}

/// Reads the model folder `folder` (named `name`) in Triton's layout.
/// Errors say which file and field are wrong and why.
/// `overrides` (a load request's configuration) replaces the file's fields
/// it names.
pub fn read(
    folder: &Path,
    name: &str,
    overrides: Option<&Map<String, Value>>,
) -> Result<TritonModel, String> {
    let file = folder.join(CONFIG_FILE);
    if folder.join("model.toml").exists() {
        return Err(format!(
            "{}: a model folder holds either model.toml (Gantry's layout) or {CONFIG_FILE} (Triton's), not both",
            folder.display()
        ));
    }
    let text = if file.is_file() {
        fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?
    } else {
        String::new()
    };
    let in_file = |e: String| format!("{}: {e}", file.display());
    let config = parse_with(&text, overrides).map_err(in_file)?;
    let mut read = settings::translate(&config, name).map_err(in_file)?;
    read.settings.warmup_samples =
        settings::warmup_samples(&config.fields.model_warmup, folder).map_err(in_file)?;
    let version =
        versions::select_version(folder, config.fields.version_policy.as_ref()).map_err(in_file)?;
    let model_file = match config.fields.default_model_filename.as_str() {
        "" => DEFAULT_MODEL_FILE,
        named => named,
    };
    if model_file.contains('/') || model_file.starts_with('.') {
        return Err(in_file(format!(
            "default_model_filename '{model_file}' must name a file in the version folder"
        )));
    }
    let onnx_path = folder.join(version.to_string()).join(model_file);
    if !onnx_path.is_file() {
        return Err(format!("{}: file not found", onnx_path.display()));
    }
    Ok(TritonModel {
        settings: read.settings,
        version,
        onnx_path,
        labels_file: read.labels.map(|labels| folder.join(labels)),
        config: config.json,
    })
}

#[cfg(test)]
mod tests;
