//! A served model's configuration in Triton's JSON form
//! (`GET /v2/models/{m}/config`), built from its `model.toml` settings and
//! the signature its ONNX session reports: what `tritonclient`'s
//! `get_model_config` and tools written for Triton read.
//!
//! A batched model (every input's first dimension dynamic) reports
//! `max_batch_size` from its settings and dims without the batch
//! dimension; an unbatched one reports 0 and its full dims (`-1` dynamic).
//! A sequence model reports `sequence_batching` (its control inputs and
//! implicit state) instead of `dynamic_batching`, and lists only the
//! inputs and outputs clients send and receive.

use gantry_actors::device::{Device, DevicePreference};
use gantry_actors::processing::OutputProcessing;
use gantry_actors::repository::ModelSettings;
use gantry_actors::sequence::SequenceSettings;
use gantry_actors::signature::{ModelSignature, TensorSpec};
use gantry_actors::{DataType, ModelHandle, Priority};
use serde_json::{json, Value};

use super::config_type;

/// The configuration of `model`, whose replicas run on `devices`.
pub fn model_config(model: &ModelHandle, signature: &ModelSignature, devices: &[Device]) -> Value {
    let settings = &model.spec.settings;
    let batched = signature.is_batched();
    let dims = |spec: &TensorSpec| -> Vec<i64> {
        let shape = spec.shape_i64();
        if batched {
            shape[1..].to_vec()
        } else {
            shape
        }
    };
    let label_output = match &settings.output {
        OutputProcessing::Classes(classes) => Some((
            classes
                .output
                .clone()
                .or_else(|| signature.outputs.first().map(|o| o.name.clone())),
            classes.labels.clone().unwrap_or_default(),
        )),
        _ => None,
    };
    let sequence = settings.sequence.as_ref();
    let inputs: Vec<Value> = signature
        .inputs
        .iter()
        .filter(|spec| !sequence.is_some_and(|seq| seq.fills_input(&spec.name)))
        .map(|spec| {
            json!({
                "name": spec.name,
                "data_type": config_type(spec.dtype),
                "format": "FORMAT_NONE",
                "dims": dims(spec),
                "is_shape_tensor": false,
                "allow_ragged_batch": false,
                "optional": false,
            })
        })
        .collect();
    let outputs: Vec<Value> = signature
        .outputs
        .iter()
        .filter(|spec| !sequence.is_some_and(|seq| seq.keeps_output(&spec.name)))
        .map(|spec| {
            let label_filename = match &label_output {
                Some((Some(output), file)) if *output == spec.name => file.clone(),
                _ => String::new(),
            };
            json!({
                "name": spec.name,
                "data_type": config_type(spec.dtype),
                "dims": dims(spec),
                "label_filename": label_filename,
                "is_shape_tensor": false,
            })
        })
        .collect();
    let mut config = json!({
        "name": model.name(),
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "runtime": "",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": if batched { settings.max_batch_size } else { 0 },
        "input": inputs,
        "output": outputs,
        "batch_input": [],
        "batch_output": [],
        "instance_group": [instance_group(model, devices)],
        "default_model_filename": "model.onnx",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {},
        "model_warmup": [],
    });
    if let Some(sequence) = sequence {
        config["sequence_batching"] = sequence_batching(sequence, settings, signature, &dims);
    } else if batched {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": settings.batch_window_ms * 1000,
            "preserve_ordering": false,
            "priority_levels": Priority::ALL.len(),
            "default_priority_level": Priority::default().rank() + 1,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": true,
                "max_queue_size": settings.queue_capacity,
            },
            "priority_queue_policy": {},
        });
    }
    if let Some(read) = &model.spec.triton_config {
        overlay_read(&mut config, read);
    }
    config
}

/// A model read from Triton's layout answers its `config.pbtxt` as
/// written (an input's `format`, an output's `label_filename`, the
/// sequence controls' values) over what the server reports; the instance
/// group stays what runs.
fn overlay_read(config: &mut Value, read: &Value) {
    let Value::Object(read) = read else { return };
    // Left out of the file's JSON when 0 (protobuf's default): the file's
    // all the same (0: no batch dimension, whatever the model's shapes).
    config["max_batch_size"] = read.get("max_batch_size").cloned().unwrap_or(json!(0));
    for (key, value) in read.iter().filter(|(key, _)| *key != "instance_group") {
        match config.get_mut(key) {
            Some(slot) => overlay(slot, value),
            None => config[key] = value.clone(),
        }
    }
}

/// `read` over `base`: objects key by key, lists of named objects (inputs,
/// outputs, control inputs) item by item by name, anything else replaced.
fn overlay(base: &mut Value, read: &Value) {
    let named = |items: &[Value]| items.iter().all(|i| i["name"].is_string());
    match (base, read) {
        (Value::Object(base), Value::Object(read)) => {
            for (key, value) in read {
                match base.get_mut(key) {
                    Some(slot) => overlay(slot, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(read)) if named(read) => {
            for item in read {
                match base.iter_mut().find(|b| b["name"] == item["name"]) {
                    Some(slot) => overlay(slot, item),
                    None => base.push(item.clone()),
                }
            }
        }
        (slot, value) => *slot = value.clone(),
    }
}

/// One group: every replica, on the GPUs they hold or the CPU.
fn instance_group(model: &ModelHandle, devices: &[Device]) -> Value {
    let mut gpus: Vec<u32> = devices
        .iter()
        .filter_map(|d| match d {
            Device::Gpu(index) => Some(*index),
            Device::Cpu => None,
        })
        .collect();
    gpus.sort_unstable();
    gpus.dedup();
    let settings = &model.spec.settings;
    let on_gpu = !gpus.is_empty() || settings.device == DevicePreference::Gpu;
    if gpus.is_empty() && on_gpu {
        gpus = settings.gpus.clone().unwrap_or_default();
    }
    json!({
        "name": format!("{}_0", model.name()),
        "kind": if on_gpu { "KIND_GPU" } else { "KIND_CPU" },
        "count": model.state.desired_replicas(),
        "gpus": gpus,
        "secondary_devices": [],
        "profile": [],
        "passive": false,
        "host_policy": "",
    })
}

/// `sequence_batching`: the oldest-first strategy (requests of different
/// sequences share batches), the control inputs the server fills and the
/// implicit state it carries.
fn sequence_batching(
    sequence: &SequenceSettings,
    settings: &ModelSettings,
    signature: &ModelSignature,
    dims: &dyn Fn(&TensorSpec) -> Vec<i64>,
) -> Value {
    let spec_of = |name: &str| signature.inputs.iter().find(|s| s.name == name);
    let flags = [
        (&sequence.start, "CONTROL_SEQUENCE_START"),
        (&sequence.end, "CONTROL_SEQUENCE_END"),
        (&sequence.ready, "CONTROL_SEQUENCE_READY"),
    ];
    let mut control_input: Vec<Value> = flags
        .iter()
        .filter_map(|(name, kind)| {
            let name = name.as_deref()?;
            let dtype = spec_of(name).map_or(DataType::Int32, |s| s.dtype);
            Some(json!({"name": name, "control": [flag_control(kind, dtype)]}))
        })
        .collect();
    if let Some(name) = &sequence.corrid {
        let dtype = spec_of(name).map_or(DataType::Uint64, |s| s.dtype);
        control_input.push(json!({"name": name, "control": [{
            "kind": "CONTROL_SEQUENCE_CORRID",
            "int32_false_true": [],
            "fp32_false_true": [],
            "bool_false_true": [],
            "data_type": config_type(dtype),
        }]}));
    }
    let state: Vec<Value> = sequence
        .state
        .iter()
        .map(|pair| {
            let spec = spec_of(&pair.input);
            let state_dims = match (&pair.dims, spec) {
                (Some(d), _) => d.iter().map(|&n| n as i64).collect(),
                (None, Some(spec)) => dims(spec),
                (None, None) => Vec::new(),
            };
            json!({
                "input_name": pair.input,
                "output_name": pair.output,
                "data_type": spec.map_or_else(|| "TYPE_INVALID".into(), |s| config_type(s.dtype)),
                "dims": state_dims,
                "initial_state": [],
                "use_same_buffer_for_input_output": false,
                "use_growable_memory": false,
            })
        })
        .collect();
    json!({
        "oldest": {
            "max_candidate_sequences": sequence.max_sequences,
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": settings.batch_window_ms * 1000,
            "preserve_ordering": false,
        },
        "max_sequence_idle_microseconds": sequence.max_sequence_idle_ms * 1000,
        "control_input": control_input,
        "state": state,
        "iterative_sequence": false,
    })
}

/// A START, END or READY control: the false and true values in the
/// field Triton reads for the input's datatype.
fn flag_control(kind: &str, dtype: DataType) -> Value {
    let (int32, fp32, boolean): (Vec<i32>, Vec<f32>, Vec<bool>) = match dtype {
        DataType::Fp32 | DataType::Fp16 | DataType::Bf16 | DataType::Fp64 => {
            (vec![], vec![0.0, 1.0], vec![])
        }
        DataType::Bool => (vec![], vec![], vec![false, true]),
        _ => (vec![0, 1], vec![], vec![]),
    };
    json!({
        "kind": kind,
        "int32_false_true": int32,
        "fp32_false_true": fp32,
        "bool_false_true": boolean,
        "data_type": "TYPE_INVALID",
    })
}
