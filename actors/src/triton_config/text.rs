//! `config.pbtxt` parsed: protobuf text format against Triton's
//! `ModelConfig` descriptors, every set field checked against those Gantry
//! honours, then read through protobuf's JSON mapping into the fields the
//! translation uses.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value as Field};
use serde::Deserialize;
use serde_json::{Map, Value};

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
    "input.reshape",
    "input.reshape.shape",
    "input.optional",
    "output",
    "output.name",
    "output.data_type",
    "output.dims",
    "output.reshape",
    "output.reshape.shape",
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
    "dynamic_batching.priority_levels",
    "dynamic_batching.default_priority_level",
    "dynamic_batching.default_queue_policy",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "dynamic_batching.default_queue_policy.timeout_action",
    "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    "dynamic_batching.default_queue_policy.allow_timeout_override",
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
    "model_warmup",
    "model_warmup.name",
    "model_warmup.batch_size",
    "model_warmup.count",
    "model_warmup.inputs",
    "model_warmup.inputs.data_type",
    "model_warmup.inputs.dims",
    "model_warmup.inputs.zero_data",
    "model_warmup.inputs.random_data",
    "model_warmup.inputs.input_data_file",
];

/// honours.
pub struct ParsedConfig {
    /// In protobuf's JSON mapping.
    pub json: Value,
    pub(super) fields: Config,
}

/// Parses protobuf text format against Triton's `ModelConfig`; a field
/// Gantry does not honour is an error naming it.
pub fn parse(text: &str) -> Result<ParsedConfig, String> {
    parse_with(text, None)
}

/// [`parse`], with the fields of `overrides` (a load request's
/// configuration, in protobuf's JSON mapping: 64-bit integers as strings or
/// numbers, enums by name) in place of the file's.
pub fn parse_with(
    text: &str,
    overrides: Option<&Map<String, Value>>,
) -> Result<ParsedConfig, String> {
    let descriptor = DESCRIPTORS
        .get_message_by_name("inference.ModelConfig")
        .expect("inference.ModelConfig in model_config.proto");
    let mut message =
        DynamicMessage::parse_text_format(descriptor.clone(), &colons_before_lists(text))
            .map_err(|e| format!("not a valid Triton model configuration: {e}"))?;
    if let Some(overrides) = overrides {
        let options = SerializeOptions::new().use_proto_field_name(true);
        let Value::Object(mut merged) = message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| format!("cannot read the configuration: {e}"))?
        else {
            unreachable!("a message serializes as an object");
        };
        merged.extend(overrides.clone());
        message = DynamicMessage::deserialize(descriptor.clone(), Value::Object(merged)).map_err(
            |e| {
                // The field at fault, found alone (serde's error may not
                // name it).
                let field = overrides.iter().find(|(key, value)| {
                    let alone = Map::from_iter([((*key).clone(), (*value).clone())]);
                    DynamicMessage::deserialize(descriptor.clone(), Value::Object(alone)).is_err()
                });
                match field {
                    Some((key, _)) => format!("the load's configuration override: `{key}`: {e}"),
                    None => format!("the load's configuration override: {e}"),
                }
            },
        )?;
    }
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
pub(super) fn colons_before_lists(text: &str) -> String {
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
pub(super) struct Config {
    pub(super) name: String,
    pub(super) platform: String,
    pub(super) backend: String,
    pub(super) max_batch_size: i64,
    pub(super) default_model_filename: String,
    pub(super) version_policy: Option<VersionPolicy>,
    pub(super) input: Vec<Tensor>,
    pub(super) output: Vec<Tensor>,
    pub(super) instance_group: Vec<InstanceGroup>,
    pub(super) dynamic_batching: Option<DynamicBatching>,
    pub(super) sequence_batching: Option<SequenceBatching>,
    pub(super) parameters: BTreeMap<String, Parameter>,
    pub(super) model_warmup: Vec<Warmup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Warmup {
    pub(super) name: String,
    pub(super) batch_size: u64,
    pub(super) count: u64,
    pub(super) inputs: BTreeMap<String, WarmupInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct WarmupInput {
    pub(super) data_type: Option<String>,
    pub(super) dims: Vec<i64>,
    pub(super) zero_data: bool,
    pub(super) random_data: bool,
    pub(super) input_data_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum VersionPolicy {
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
pub(super) struct Tensor {
    pub(super) name: String,
    pub(super) dims: Vec<i64>,
    pub(super) reshape: Option<Reshape>,
    pub(super) label_filename: String,
    pub(super) optional: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Reshape {
    pub(super) shape: Vec<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct InstanceGroup {
    pub(super) count: Option<i64>,
    pub(super) kind: Option<String>,
    pub(super) gpus: Vec<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct DynamicBatching {
    pub(super) max_queue_delay_microseconds: u64,
    pub(super) default_queue_policy: Option<QueuePolicy>,
    pub(super) priority_levels: u64,
    pub(super) default_priority_level: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct QueuePolicy {
    pub(super) max_queue_size: u64,
    pub(super) timeout_action: Option<String>,
    pub(super) default_timeout_microseconds: u64,
    pub(super) allow_timeout_override: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SequenceBatching {
    pub(super) max_sequence_idle_microseconds: u64,
    pub(super) oldest: Option<Oldest>,
    pub(super) control_input: Vec<ControlInput>,
    pub(super) state: Vec<State>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Oldest {
    pub(super) max_candidate_sequences: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ControlInput {
    pub(super) name: String,
    pub(super) control: Vec<Control>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Control {
    pub(super) kind: Option<String>,
    pub(super) int32_false_true: Vec<i64>,
    pub(super) fp32_false_true: Vec<f64>,
    pub(super) bool_false_true: Vec<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct State {
    pub(super) input_name: String,
    pub(super) output_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Parameter {
    pub(super) string_value: String,
}
