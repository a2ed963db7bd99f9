//! What a read `config.pbtxt` sets, as Gantry's [`ModelSettings`].

use crate::device::DevicePreference;
use crate::model_settings::{ModelSettings, QueueTimeout};
use crate::reshape::TensorReshape;
use crate::sequence::{SequenceSettings, StateSettings};

use std::path::Path;
use std::time::Duration;

use super::text::{DynamicBatching, InstanceGroup, ParsedConfig, SequenceBatching, Warmup};
use crate::priority::Priority;
use crate::tensor::DataType;
use crate::warmup_sample::{WarmupData, WarmupInput, WarmupSample};

/// What a configuration sets, as Gantry's settings.
pub(super) struct Translated {
    pub(super) settings: ModelSettings,
    /// The `label_filename` of an output.
    pub(super) labels: Option<String>,
}

pub(super) fn translate(parsed: &ParsedConfig, folder_name: &str) -> Result<Translated, String> {
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
        // An unbatched model: every request runs alone, as sent.
        0 => {
            settings.unbatched = true;
            1
        }
        n => usize::try_from(n).map_err(|_| "max_batch_size is too large".to_string())?,
    };
    instance_groups(&config.instance_group, &mut settings)?;
    if let Some(batching) = &config.dynamic_batching {
        settings.batch_window_ms = batching.max_queue_delay_microseconds.div_ceil(1000);
        settings.priority_levels = priority_levels(batching)?;
        if let Some(policy) = &batching.default_queue_policy {
            if policy.max_queue_size > 0 {
                settings.queue_capacity =
                    usize::try_from(policy.max_queue_size).unwrap_or(usize::MAX);
            }
            if let Some(action) = policy.timeout_action.as_deref().filter(|a| *a != "REJECT") {
                return Err(format!(
                    "dynamic_batching.default_queue_policy.timeout_action {action} is not supported by Gantry (REJECT is: a request past its timeout is answered 504)"
                ));
            }
            if policy.default_timeout_microseconds > 0 {
                settings.queue_timeout = Some(QueueTimeout {
                    default: Duration::from_micros(policy.default_timeout_microseconds),
                    allow_override: policy.allow_timeout_override,
                });
            }
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
    for (tensors, input) in [(&config.input, true), (&config.output, false)] {
        for tensor in tensors {
            let Some(reshape) = &tensor.reshape else {
                continue;
            };
            let pair = TensorReshape {
                name: tensor.name.clone(),
                input,
                dims: tensor.dims.clone(),
                model_dims: reshape.shape.clone(),
                batched: config.max_batch_size > 0,
            };
            pair.check()?;
            settings.reshape.push(pair);
        }
    }
    settings.optional_inputs = config
        .input
        .iter()
        .filter(|i| i.optional)
        .map(|i| i.name.clone())
        .collect();
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
    // A group's count is per GPU it lists (Triton's: `count: 1, gpus: [0,
    // 1]` is one instance on each).
    let mut replicas = 0usize;
    for group in groups {
        match group.count.unwrap_or(1) {
            n if n < 1 => return Err("instance_group count must be at least 1".into()),
            n => {
                let per_device = usize::try_from(n).unwrap_or(usize::MAX);
                replicas =
                    replicas.saturating_add(per_device.saturating_mul(group.gpus.len().max(1)));
            }
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
    // The state starts as zeros of the model's own shape (a dynamic
    // dimension 1), with or without the batch dimension as the request
    // comes: Triton's `dims` (per item) say the same for a model that
    // agrees with its configuration.
    for state in &sequence.state {
        settings.state.push(StateSettings {
            input: state.input_name.clone(),
            output: state.output_name.clone(),
            dims: None,
        });
    }
    Ok(settings)
}

/// The model's `model_warmup` samples; an input's `input_data_file` is read
/// from the model's `warmup/` folder, as Triton reads it.
pub(super) fn warmup_samples(
    warmups: &[Warmup],
    folder: &Path,
) -> Result<Vec<WarmupSample>, String> {
    warmups
        .iter()
        .map(|warmup| {
            let what = format!("model_warmup '{}'", warmup.name);
            let inputs = warmup
                .inputs
                .iter()
                .map(|(name, input)| {
                    let type_name = input.data_type.as_deref().unwrap_or("TYPE_INVALID");
                    let dtype = match type_name.strip_prefix("TYPE_") {
                        Some("STRING") => Some(DataType::Bytes),
                        Some(other) => DataType::parse(other),
                        None => None,
                    }
                    .ok_or_else(|| format!("{what}: input '{name}' has no datatype Gantry serves ({type_name})"))?;
                    let dims = input
                        .dims
                        .iter()
                        .map(|&d| usize::try_from(d))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| format!("{what}: input '{name}' has a negative dimension"))?;
                    let data = if input.zero_data {
                        WarmupData::Zero
                    } else if input.random_data {
                        WarmupData::Random
                    } else if !input.input_data_file.is_empty() {
                        let file = &input.input_data_file;
                        if file.contains('/') || file.starts_with('.') {
                            return Err(format!("{what}: input_data_file '{file}' must name a file in the model's warmup/ folder"));
                        }
                        let path = folder.join("warmup").join(file);
                        WarmupData::File(std::fs::read(&path).map_err(|e| format!("{what}: {}: {e}", path.display()))?)
                    } else {
                        return Err(format!("{what}: input '{name}' sets none of zero_data, random_data, input_data_file"));
                    };
                    Ok(WarmupInput { name: name.clone(), dtype, dims, data })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(WarmupSample {
                name: warmup.name.clone(),
                batch_size: usize::try_from(warmup.batch_size).unwrap_or(usize::MAX),
                count: u32::try_from(warmup.count).unwrap_or(u32::MAX),
                inputs,
            })
        })
        .collect()
}

/// `priority_levels` (Gantry has three: 1 high, 2 normal, 3 low) and the
/// level of a request that asks for none.
fn priority_levels(batching: &DynamicBatching) -> Result<Option<(usize, Priority)>, String> {
    match (batching.priority_levels, batching.default_priority_level) {
        (0, 0) => Ok(None),
        (0, _) => Err("dynamic_batching.default_priority_level needs priority_levels".into()),
        (levels, _) if levels > 3 => Err(format!(
            "dynamic_batching.priority_levels {levels}: Gantry has three priority levels (1 high, 2 normal, 3 low)"
        )),
        (levels, default) if default == 0 || default > levels => Err(format!(
            "dynamic_batching.default_priority_level {default} must be between 1 and priority_levels ({levels})"
        )),
        (levels, default) => {
            let default = Priority::from_level(default as i64).map_err(|e| e.to_string())?;
            Ok(Some((levels as usize, default)))
        }
    }
}
