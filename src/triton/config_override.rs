//! The configuration override of a Triton load request
//! (`{"parameters": {"config": "<JSON>"}}`) turned into `model.toml` keys.
//!
//! Triton's keys that Gantry has a setting for are translated:
//! `max_batch_size`; `instance_group` (one group: `count` → `replicas`,
//! `kind` → `device`, `gpus`); `dynamic_batching.max_queue_delay_microseconds`
//! → `batch_window_ms` (rounded up to whole milliseconds) and
//! `dynamic_batching.default_queue_policy.max_queue_size` →
//! `queue_capacity`; their integers as numbers or, as protobuf's JSON
//! mapping writes 64-bit ones, as strings (`"max_batch_size": "16"`). Keys that describe the model rather than configure it
//! (`input`, `output`, `version_policy`, ...) are accepted as the model's
//! own configuration answers them, and ignored: clients send back a
//! configuration they read. `name`, `platform` and `backend` must match.
//! Any other key is a `model.toml` key (`replicas`, `warmup`, ...), checked
//! with the file's own checks when the load reads it.

use serde_json::{Map, Value};

/// Triton configuration keys that Gantry reports but does not configure.
const DESCRIPTIVE: [&str; 11] = [
    "version_policy",
    "input",
    "output",
    "batch_input",
    "batch_output",
    "optimization",
    "default_model_filename",
    "cc_model_filenames",
    "metric_tags",
    "parameters",
    "model_warmup",
];

/// Keys of an instance group that Gantry does not configure.
const GROUP_DESCRIPTIVE: [&str; 5] = [
    "name",
    "secondary_devices",
    "profile",
    "passive",
    "host_policy",
];

/// Keys of `dynamic_batching` that Gantry does not configure.
const BATCHING_DESCRIPTIVE: [&str; 5] = [
    "preferred_batch_size",
    "preserve_ordering",
    "priority_levels",
    "default_priority_level",
    "priority_queue_policy",
];

/// The `model.toml` keys that the override `config` (a JSON object, as
/// text) sets for `model`; the error says which key is wrong and why.
pub fn overrides_from_config(model: &str, config: &str) -> Result<toml::Table, String> {
    let parsed: Value = serde_json::from_str(config)
        .map_err(|e| format!("parameters.config is not valid JSON: {e}"))?;
    let Value::Object(object) = parsed else {
        return Err("parameters.config must be a JSON object".into());
    };
    let mut out = toml::Table::new();
    for (key, value) in object {
        match key.as_str() {
            "name" => expect_str(&key, &value, model)?,
            "platform" => expect_str(&key, &value, "onnxruntime_onnx")?,
            "backend" => expect_str(&key, &value, "onnxruntime")?,
            "runtime" => {}
            "max_batch_size" => set_int(&mut out, "max_batch_size", "max_batch_size", value)?,
            "instance_group" => instance_group(&mut out, value)?,
            "dynamic_batching" => dynamic_batching(&mut out, value)?,
            "sequence_batching" | "ensemble_scheduling" | "response_cache" => {
                return Err(format!("parameters.config: `{key}` is not supported"))
            }
            k if DESCRIPTIVE.contains(&k) => {}
            _ => set(&mut out, &key, value)?,
        }
    }
    Ok(out)
}

fn expect_str(key: &str, value: &Value, wanted: &str) -> Result<(), String> {
    match value.as_str() {
        Some(v) if v == wanted || v.is_empty() => Ok(()),
        _ => Err(format!(
            "parameters.config: `{key}` must be \"{wanted}\", not {value}"
        )),
    }
}

fn set(out: &mut toml::Table, key: &str, value: Value) -> Result<(), String> {
    let converted = toml::Value::try_from(&value)
        .map_err(|e| format!("parameters.config: `{key}` = {value} has no model.toml form: {e}"))?;
    out.insert(key.to_string(), converted);
    Ok(())
}

/// An integer in protobuf's JSON mapping: a number, or a string holding
/// one (64-bit integers are written as strings, and parsers take either
/// form for every integer type).
fn proto_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Sets `key` to the integer `value` (see [`proto_int`]), or to each of a
/// list's.
fn set_int(out: &mut toml::Table, triton_key: &str, key: &str, value: Value) -> Result<(), String> {
    let not_int = || {
        format!("parameters.config: `{triton_key}` must be an integer (or a string holding one), not {value}")
    };
    let converted = match &value {
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .map(|item| proto_int(item).map(toml::Value::Integer))
                .collect::<Option<_>>()
                .ok_or_else(not_int)?,
        ),
        single => toml::Value::Integer(proto_int(single).ok_or_else(not_int)?),
    };
    out.insert(key.to_string(), converted);
    Ok(())
}

fn object(key: &str, value: Value) -> Result<Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "parameters.config: `{key}` must be an object, not {other}"
        )),
    }
}

fn instance_group(out: &mut toml::Table, value: Value) -> Result<(), String> {
    let groups = match value {
        Value::Array(groups) if groups.len() == 1 => groups,
        other => {
            return Err(format!(
                "parameters.config: `instance_group` must list exactly one group, not {other}"
            ))
        }
    };
    let group = groups.into_iter().next().unwrap_or_default();
    for (key, value) in object("instance_group[0]", group)? {
        match key.as_str() {
            "count" => set_int(out, "instance_group[0].count", "replicas", value)?,
            "kind" => {
                let device = match value.as_str() {
                    Some("KIND_CPU") => "cpu",
                    Some("KIND_GPU") => "gpu",
                    Some("KIND_AUTO") => "auto",
                    _ => {
                        return Err(format!(
                            "parameters.config: `instance_group[0].kind` must be KIND_CPU, \
                             KIND_GPU or KIND_AUTO, not {value}"
                        ))
                    }
                };
                out.insert("device".into(), toml::Value::String(device.into()));
            }
            "gpus" => set_int(out, "instance_group[0].gpus", "gpus", value)?,
            k if GROUP_DESCRIPTIVE.contains(&k) => {}
            _ => {
                return Err(format!(
                    "parameters.config: `instance_group[0].{key}` is not supported"
                ))
            }
        }
    }
    Ok(())
}

fn dynamic_batching(out: &mut toml::Table, value: Value) -> Result<(), String> {
    for (key, value) in object("dynamic_batching", value)? {
        match key.as_str() {
            "max_queue_delay_microseconds" => {
                let Some(us) = proto_int(&value).and_then(|us| u64::try_from(us).ok()) else {
                    return Err(format!(
                        "parameters.config: `dynamic_batching.max_queue_delay_microseconds` \
                         must be a non-negative integer, not {value}"
                    ));
                };
                let ms = i64::try_from(us.div_ceil(1000)).unwrap_or(i64::MAX);
                out.insert("batch_window_ms".into(), toml::Value::Integer(ms));
            }
            "default_queue_policy" => {
                let policy = object("dynamic_batching.default_queue_policy", value)?;
                if let Some(size) = policy.get("max_queue_size") {
                    let key = "dynamic_batching.default_queue_policy.max_queue_size";
                    set_int(out, key, "queue_capacity", size.clone())?;
                }
            }
            k if BATCHING_DESCRIPTIVE.contains(&k) => {}
            _ => {
                return Err(format!(
                    "parameters.config: `dynamic_batching.{key}` is not supported"
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_keys_become_model_toml_keys() {
        let config = r#"{"name": "m", "max_batch_size": 4,
            "instance_group": [{"name": "m_0", "count": 2, "kind": "KIND_CPU"}],
            "dynamic_batching": {"max_queue_delay_microseconds": 2500,
                "default_queue_policy": {"max_queue_size": 50}, "priority_levels": 3},
            "input": [{"name": "x"}], "warmup": 0}"#;
        let table = overrides_from_config("m", config).unwrap();
        assert_eq!(table["max_batch_size"].as_integer(), Some(4));
        assert_eq!(table["replicas"].as_integer(), Some(2));
        assert_eq!(table["device"].as_str(), Some("cpu"));
        assert_eq!(table["batch_window_ms"].as_integer(), Some(3));
        assert_eq!(table["queue_capacity"].as_integer(), Some(50));
        assert_eq!(table["warmup"].as_integer(), Some(0));
        assert!(!table.contains_key("input"));
    }

    #[test]
    fn integers_may_come_as_strings_as_protobufs_json_writes_them() {
        let config = r#"{"max_batch_size": "16",
            "instance_group": [{"count": "2", "gpus": ["0", 1]}],
            "dynamic_batching": {"max_queue_delay_microseconds": "100",
                "default_queue_policy": {"max_queue_size": "8"}}}"#;
        let table = overrides_from_config("m", config).unwrap();
        assert_eq!(table["max_batch_size"].as_integer(), Some(16));
        assert_eq!(table["replicas"].as_integer(), Some(2));
        assert_eq!(
            table["gpus"].as_array().unwrap(),
            &vec![toml::Value::Integer(0), toml::Value::Integer(1)]
        );
        assert_eq!(table["batch_window_ms"].as_integer(), Some(1));
        assert_eq!(table["queue_capacity"].as_integer(), Some(8));
    }

    #[test]
    fn bad_overrides_say_what_is_wrong() {
        for (config, says) in [
            ("not json", "not valid JSON"),
            ("[1]", "must be a JSON object"),
            (r#"{"name": "other"}"#, "`name` must be \"m\""),
            (r#"{"platform": "tensorflow_savedmodel"}"#, "`platform`"),
            (r#"{"instance_group": []}"#, "exactly one group"),
            (r#"{"instance_group": [{"kind": "KIND_TPU"}]}"#, "KIND_CPU"),
            (
                r#"{"instance_group": [{"rate": 1}]}"#,
                "instance_group[0].rate",
            ),
            (
                r#"{"dynamic_batching": {"max_queue_delay_microseconds": -1}}"#,
                "non-negative",
            ),
            (
                r#"{"dynamic_batching": {"turbo": true}}"#,
                "dynamic_batching.turbo",
            ),
            (r#"{"sequence_batching": {}}"#, "not supported"),
            (
                r#"{"max_batch_size": null}"#,
                "`max_batch_size` must be an integer",
            ),
            (
                r#"{"max_batch_size": "sixteen"}"#,
                "`max_batch_size` must be an integer",
            ),
            (r#"{"replicas": null}"#, "no model.toml form"),
        ] {
            let err = overrides_from_config("m", config).unwrap_err();
            assert!(err.contains(says), "{config}: {err}");
        }
    }
}
