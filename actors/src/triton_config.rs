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
//! time), `parameters` (`intra_op_thread_count`). Inputs and outputs
//! (`dims`, `format`, `label_filename`) are answered back in the model's
//! configuration as read.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value as Field};
use serde::Deserialize;
use serde_json::Value;

use crate::device::DevicePreference;
use crate::model_settings::ModelSettings;
use crate::sequence::{SequenceSettings, StateSettings};

/// The configuration file of a model folder in Triton's layout.
pub const CONFIG_FILE: &str = "config.pbtxt";

/// The model file in a version folder unless `default_model_filename`
/// names another.
const DEFAULT_MODEL_FILE: &str = "model.onnx";

static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/model_config.bin")).as_ref())
        .expect("model_config.proto's descriptors, compiled by build.rs")
});

/// The fields Gantry honours, as dotted paths (a list's or a map's entries
/// share their field's path). Any other field set in a `config.pbtxt`
/// fails the model's load, named.
pub const HONOURED: &[&str] = &[
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "default_model_filename",
    "version_policy",
    "version_policy.latest",
    "version_policy.latest.num_versions",
    "version_policy.all",
    "version_policy.specific",
    "version_policy.specific.versions",
    "input",
    "input.name",
    "input.data_type",
    "input.format",
    "input.dims",
    "output",
    "output.name",
    "output.data_type",
    "output.dims",
    "output.label_filename",
    "instance_group",
    "instance_group.name",
    "instance_group.count",
    "instance_group.kind",
    "instance_group.gpus",
    "dynamic_batching",
    "dynamic_batching.max_queue_delay_microseconds",
    "dynamic_batching.preferred_batch_size",
    "dynamic_batching.preserve_ordering",
    "dynamic_batching.default_queue_policy",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "sequence_batching",
    "sequence_batching.max_sequence_idle_microseconds",
    "sequence_batching.direct",
    "sequence_batching.direct.max_queue_delay_microseconds",
    "sequence_batching.direct.minimum_slot_utilization",
    "sequence_batching.oldest",
    "sequence_batching.oldest.max_candidate_sequences",
    "sequence_batching.oldest.preferred_batch_size",
    "sequence_batching.oldest.max_queue_delay_microseconds",
    "sequence_batching.oldest.preserve_ordering",
    "sequence_batching.control_input",
    "sequence_batching.control_input.name",
    "sequence_batching.control_input.control",
    "sequence_batching.control_input.control.kind",
    "sequence_batching.control_input.control.int32_false_true",
    "sequence_batching.control_input.control.fp32_false_true",
    "sequence_batching.control_input.control.bool_false_true",
    "sequence_batching.control_input.control.data_type",
    "sequence_batching.state",
    "sequence_batching.state.input_name",
    "sequence_batching.state.output_name",
    "sequence_batching.state.data_type",
    "sequence_batching.state.dims",
    "parameters",
    "parameters.string_value",
];

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
            && version_folders(folder)
                .iter()
                .any(|(_, path)| path.join(DEFAULT_MODEL_FILE).is_file()))
}

/// Reads the model folder `folder` (named `name`) in Triton's layout.
/// Errors say which file and field are wrong and why.
pub fn read(folder: &Path, name: &str) -> Result<TritonModel, String> {
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
    let config = parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let read = translate(&config, name).map_err(|e| format!("{}: {e}", file.display()))?;
    let version = select_version(folder, config.fields.version_policy.as_ref())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let model_file = match config.fields.default_model_filename.as_str() {
        "" => DEFAULT_MODEL_FILE,
        named => named,
    };
    if model_file.contains('/') || model_file.starts_with('.') {
        return Err(format!(
            "{}: default_model_filename '{model_file}' must name a file in the version folder",
            file.display()
        ));
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

/// A `config.pbtxt` text parsed and checked against the fields Gantry
/// honours.
pub struct ParsedConfig {
    /// In protobuf's JSON mapping.
    pub json: Value,
    fields: Config,
}

/// Parses protobuf text format against Triton's `ModelConfig`; a field
/// Gantry does not honour is an error naming it.
pub fn parse(text: &str) -> Result<ParsedConfig, String> {
    let descriptor = DESCRIPTORS
        .get_message_by_name("inference.ModelConfig")
        .expect("inference.ModelConfig in model_config.proto");
    let message = DynamicMessage::parse_text_format(descriptor, &colons_before_lists(text))
        .map_err(|e| format!("not a valid Triton model configuration: {e}"))?;
    let mut refused = Vec::new();
    refused_fields(&message, "", &mut refused);
    if !refused.is_empty() {
        refused.sort();
        refused.dedup();
        return Err(format!(
            "{} {} not supported by Gantry",
            refused
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if refused.len() == 1 { "is" } else { "are" }
        ));
    }
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("cannot read the configuration: {e}"))?;
    let fields: Config = serde_json::from_value(json.clone())
        .map_err(|e| format!("cannot read the configuration: {e}"))?;
    Ok(ParsedConfig { json, fields })
}

/// Protobuf's text format lets the colon between a field's name and a
/// list of messages be left out (`input [ { ... } ]`), and Triton's
/// configurations are written so; prost-reflect's parser wants it
/// (`input: [ ... ]`). This puts it back after every field name directly
/// followed by `[` (strings and `#` comments left alone). Hand-written, as
/// no crate offers the C++ parser's leniency over a descriptor pool.
fn colons_before_lists(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut colons = Vec::new();
    let (mut i, mut after_colon, mut name_end) = (0, false, None);
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ if b.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ if b.is_ascii_alphabetic() || b == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                // A name, unless it is a value (after a colon).
                name_end = (!after_colon).then_some(i);
                after_colon = false;
                continue;
            }
            b'[' => colons.extend(name_end),
            _ => {}
        }
        after_colon = b == b':';
        name_end = None;
        i += 1;
    }
    let mut out = String::with_capacity(text.len() + colons.len());
    let mut from = 0;
    for at in colons {
        out.push_str(&text[from..at]);
        out.push(':');
        from = at;
    }
    out.push_str(&text[from..]);
    out
}

/// Collects the dotted paths of set fields that are not [`HONOURED`].
fn refused_fields(message: &DynamicMessage, prefix: &str, out: &mut Vec<String>) {
    for (field, value) in message.fields() {
        let path = match prefix {
            "" => field.name().to_string(),
            _ => format!("{prefix}.{}", field.name()),
        };
        if HONOURED.contains(&path.as_str()) {
            refused_in(value, &path, out);
        } else {
            out.push(path);
        }
    }
}

fn refused_in(value: &Field, path: &str, out: &mut Vec<String>) {
    match value {
        Field::Message(message) => refused_fields(message, path, out),
        Field::List(items) => items.iter().for_each(|item| refused_in(item, path, out)),
        Field::Map(entries) => entries
            .values()
            .for_each(|entry| refused_in(entry, path, out)),
        _ => {}
    }
}

/// The honoured fields, in protobuf's JSON mapping.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Config {
    name: String,
    platform: String,
    backend: String,
    max_batch_size: i64,
    default_model_filename: String,
    version_policy: Option<VersionPolicy>,
    output: Vec<Output>,
    instance_group: Vec<InstanceGroup>,
    dynamic_batching: Option<DynamicBatching>,
    sequence_batching: Option<SequenceBatching>,
    parameters: BTreeMap<String, Parameter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum VersionPolicy {
    Latest {
        #[serde(default)]
        num_versions: u64,
    },
    All {},
    Specific {
        #[serde(default)]
        versions: Vec<i64>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Output {
    label_filename: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InstanceGroup {
    count: Option<i64>,
    kind: Option<String>,
    gpus: Vec<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DynamicBatching {
    max_queue_delay_microseconds: u64,
    default_queue_policy: Option<QueuePolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct QueuePolicy {
    max_queue_size: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SequenceBatching {
    max_sequence_idle_microseconds: u64,
    oldest: Option<Oldest>,
    control_input: Vec<ControlInput>,
    state: Vec<State>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Oldest {
    max_candidate_sequences: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ControlInput {
    name: String,
    control: Vec<Control>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Control {
    kind: Option<String>,
    int32_false_true: Vec<i64>,
    fp32_false_true: Vec<f64>,
    bool_false_true: Vec<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct State {
    input_name: String,
    output_name: String,
    dims: Vec<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Parameter {
    string_value: String,
}

/// What a configuration sets, as Gantry's settings.
struct Translated {
    settings: ModelSettings,
    /// The `label_filename` of an output.
    labels: Option<String>,
}

fn translate(parsed: &ParsedConfig, folder_name: &str) -> Result<Translated, String> {
    let config = &parsed.fields;
    if !config.name.is_empty() && config.name != folder_name {
        return Err(format!(
            "name '{}' differs from the model's folder '{folder_name}'",
            config.name
        ));
    }
    match (config.platform.as_str(), config.backend.as_str()) {
        ("" | "onnxruntime_onnx", "" | "onnxruntime") => {}
        (platform, "" | "onnxruntime") => {
            return Err(format!(
                "platform '{platform}' is not served by Gantry (ONNX Runtime models only: onnxruntime_onnx)"
            ))
        }
        (_, backend) => {
            return Err(format!(
                "backend '{backend}' is not served by Gantry (ONNX Runtime models only: onnxruntime)"
            ))
        }
    }
    let mut settings = ModelSettings {
        // Triton runs a request as it comes unless dynamic batching asks
        // it to wait for others.
        batch_window_ms: 0,
        ..ModelSettings::default()
    };
    settings.max_batch_size = match config.max_batch_size {
        n if n < 0 => return Err("max_batch_size must be 0 or more".into()),
        // An unbatched model: every request runs alone.
        0 => 1,
        n => usize::try_from(n).map_err(|_| "max_batch_size is too large".to_string())?,
    };
    instance_groups(&config.instance_group, &mut settings)?;
    if let Some(batching) = &config.dynamic_batching {
        settings.batch_window_ms = batching.max_queue_delay_microseconds.div_ceil(1000);
        if let Some(size) = batching
            .default_queue_policy
            .as_ref()
            .map(|p| p.max_queue_size)
            .filter(|&n| n > 0)
        {
            settings.queue_capacity = usize::try_from(size).unwrap_or(usize::MAX);
        }
    }
    if let Some(sequence) = &config.sequence_batching {
        settings.sequence = Some(sequence_settings(sequence)?);
    }
    for (key, value) in &config.parameters {
        match key.as_str() {
            "intra_op_thread_count" => {
                let threads: usize = value.string_value.trim().parse().map_err(|_| {
                    format!(
                        "parameters.intra_op_thread_count '{}' is not a number",
                        value.string_value
                    )
                })?;
                // 0 is ONNX Runtime's default: the shared pool.
                settings.intra_op_threads = (threads > 0).then_some(threads);
            }
            other => tracing::warn!(
                model = folder_name,
                parameter = other,
                "config.pbtxt parameter has no meaning to Gantry's ONNX Runtime backend; ignored"
            ),
        }
    }
    let labelled: Vec<&str> = config
        .output
        .iter()
        .map(|o| o.label_filename.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    if labelled.len() > 1 {
        return Err("label_filename is set on more than one output; Gantry labels one".into());
    }
    if let Some(file) = labelled.first() {
        if file.contains('/') || file.starts_with('.') {
            return Err(format!(
                "output label_filename '{file}' must name a file in the model's folder"
            ));
        }
    }
    settings.validate()?;
    Ok(Translated {
        settings,
        labels: labelled.first().map(|f| f.to_string()),
    })
}

fn instance_groups(groups: &[InstanceGroup], settings: &mut ModelSettings) -> Result<(), String> {
    if groups.is_empty() {
        return Ok(());
    }
    let mut kinds: Vec<&str> = groups
        .iter()
        .map(|g| g.kind.as_deref().unwrap_or("KIND_AUTO"))
        .collect();
    kinds.dedup();
    if kinds.len() > 1 {
        return Err(format!(
            "instance_group mixes kinds ({}); Gantry runs a model's replicas on one kind of device",
            kinds.join(", ")
        ));
    }
    settings.device = match kinds[0] {
        "KIND_AUTO" => DevicePreference::Auto,
        "KIND_CPU" => DevicePreference::Cpu,
        "KIND_GPU" => DevicePreference::Gpu,
        other => {
            return Err(format!(
                "instance_group kind {other} is not supported by Gantry (KIND_AUTO, KIND_CPU, KIND_GPU)"
            ))
        }
    };
    let mut replicas = 0usize;
    for group in groups {
        match group.count.unwrap_or(1) {
            n if n < 1 => return Err("instance_group count must be at least 1".into()),
            n => replicas += usize::try_from(n).unwrap_or(usize::MAX),
        }
    }
    settings.replicas = replicas;
    let mut gpus: Vec<u32> = Vec::new();
    for gpu in groups.iter().flat_map(|g| &g.gpus) {
        let gpu = u32::try_from(*gpu)
            .map_err(|_| format!("instance_group gpus: {gpu} is not a GPU index"))?;
        if !gpus.contains(&gpu) {
            gpus.push(gpu);
        }
    }
    if !gpus.is_empty() {
        if settings.device == DevicePreference::Cpu {
            return Err("instance_group gpus cannot be set with kind KIND_CPU".into());
        }
        settings.gpus = Some(gpus);
    }
    Ok(())
}

fn sequence_settings(sequence: &SequenceBatching) -> Result<SequenceSettings, String> {
    let mut settings = SequenceSettings {
        max_sequence_idle_ms: match sequence.max_sequence_idle_microseconds {
            // Triton's default: one second.
            0 => 1000,
            us => us.div_ceil(1000),
        },
        max_sequences: match sequence.oldest.as_ref().map(|o| o.max_candidate_sequences) {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => crate::sequence::default_max_sequences(),
        },
        start: None,
        end: None,
        ready: None,
        corrid: None,
        state: Vec::new(),
    };
    for input in &sequence.control_input {
        let [control] = input.control.as_slice() else {
            return Err(format!(
                "sequence_batching.control_input '{}' must hold exactly one control",
                input.name
            ));
        };
        let kind = control.kind.as_deref().unwrap_or("CONTROL_SEQUENCE_START");
        if kind != "CONTROL_SEQUENCE_CORRID" {
            let zero_one = match (
                control.int32_false_true.as_slice(),
                control.fp32_false_true.as_slice(),
                control.bool_false_true.as_slice(),
            ) {
                ([0, 1], [], []) | ([], [], [false, true]) => true,
                ([], [f, t], []) => *f == 0.0 && *t == 1.0,
                _ => false,
            };
            if !zero_one {
                return Err(format!(
                    "sequence_batching.control_input '{}': Gantry sets a control to 0 and 1 (false and true); give int32_false_true: [0, 1], fp32_false_true: [0, 1] or bool_false_true: [false, true]",
                    input.name
                ));
            }
        }
        let slot = match kind {
            "CONTROL_SEQUENCE_START" => &mut settings.start,
            "CONTROL_SEQUENCE_END" => &mut settings.end,
            "CONTROL_SEQUENCE_READY" => &mut settings.ready,
            "CONTROL_SEQUENCE_CORRID" => &mut settings.corrid,
            other => {
                return Err(format!(
                    "sequence_batching control kind {other} is not supported by Gantry"
                ))
            }
        };
        if slot.replace(input.name.clone()).is_some() {
            return Err(format!("sequence_batching names two inputs for {kind}"));
        }
    }
    for state in &sequence.state {
        let dims = state
            .dims
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(1))
            .collect::<Vec<_>>();
        settings.state.push(StateSettings {
            input: state.input_name.clone(),
            output: state.output_name.clone(),
            dims: (!dims.is_empty()).then_some(dims),
        });
    }
    Ok(settings)
}

/// The numbered version folders of `folder` (`<n>/`, n >= 1), by number.
fn version_folders(folder: &Path) -> Vec<(u64, PathBuf)> {
    let mut versions: Vec<(u64, PathBuf)> = fs::read_dir(folder)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.parse().ok().filter(|&n| n > 0)?;
            // "01" is not version 1's folder.
            (n.to_string() == name).then(|| (n, e.path()))
        })
        .collect();
    versions.sort();
    versions
}

/// The one version `policy` selects among the folder's version folders.
fn select_version(folder: &Path, policy: Option<&VersionPolicy>) -> Result<u64, String> {
    let present: Vec<u64> = version_folders(folder)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if present.is_empty() {
        return Err("no version folder (such as 1/ holding model.onnx) next to it".into());
    }
    let selected: Vec<u64> = match policy {
        None => present.last().copied().into_iter().collect(),
        Some(VersionPolicy::Latest { num_versions }) => {
            if *num_versions == 0 {
                return Err("version_policy.latest.num_versions must be at least 1".into());
            }
            let n = usize::try_from(*num_versions).unwrap_or(usize::MAX);
            present.iter().rev().take(n).rev().copied().collect()
        }
        Some(VersionPolicy::All {}) => present.clone(),
        Some(VersionPolicy::Specific { versions }) => {
            let mut wanted = Vec::new();
            for &v in versions {
                let v = u64::try_from(v)
                    .ok()
                    .filter(|v| present.contains(v))
                    .ok_or_else(|| {
                        format!("version_policy.specific names version {v}, which has no folder")
                    })?;
                if !wanted.contains(&v) {
                    wanted.push(v);
                }
            }
            wanted
        }
    };
    match selected.as_slice() {
        [one] => Ok(*one),
        [] => Err("version_policy selects no version".into()),
        several => Err(format!(
            "version_policy selects versions {several:?}; Gantry serves one version of a model at a time"
        )),
    }
}

#[cfg(test)]
#[path = "triton_config_tests.rs"]
mod tests;
