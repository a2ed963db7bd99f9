use super::settings::translate;
use super::text::colons_before_lists;
use super::versions::select_version;
use super::*;
use crate::device::DevicePreference;
use crate::repository;
use serde_json::{Map, Value};

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn settings_of(text: &str, name: &str) -> Result<ModelSettings, String> {
    translate(&parse(text)?, name).map(|t| t.settings)
}

/// Triton's `simple` example, as its repository has it.
const SIMPLE: &str = r#"
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0"  data_type: TYPE_INT32  dims: [ 16 ] },
  { name: "INPUT1"  data_type: TYPE_INT32  dims: [ 16 ] }
]
output [
  { name: "OUTPUT0"  data_type: TYPE_INT32  dims: [ 16 ] },
  { name: "OUTPUT1"  data_type: TYPE_INT32  dims: [ 16 ] }
]
"#;

/// Triton's `simple_dyna_sequence` example, on ONNX Runtime.
const DYNA_SEQUENCE: &str = r#"
name: "simple_dyna_sequence"
backend: "onnxruntime"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  oldest { max_candidate_sequences: 1024  max_queue_delay_microseconds: 10000 }
  control_input [
    { name: "START"  control [ { kind: CONTROL_SEQUENCE_START  int32_false_true: [ 0, 1 ] } ] },
    { name: "END"  control [ { kind: CONTROL_SEQUENCE_END  int32_false_true: [ 0, 1 ] } ] },
    { name: "READY"  control [ { kind: CONTROL_SEQUENCE_READY  int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID"  control [ { kind: CONTROL_SEQUENCE_CORRID  data_type: TYPE_UINT64 } ] }
  ]
}
input [ { name: "INPUT"  data_type: TYPE_INT32  dims: [ 1 ] } ]
output [ { name: "OUTPUT"  data_type: TYPE_INT32  dims: [ 1 ] } ]
parameters [ { key: "execute_delay_ms"  value: { string_value: "3" } } ]
instance_group [ { count: 2  kind: KIND_CPU } ]
"#;

#[test]
fn triton_simple_example_reads_as_a_batched_model_without_a_window() {
    let settings = settings_of(SIMPLE, "simple").unwrap();
    assert_eq!(settings.max_batch_size, 8);
    assert_eq!(settings.batch_window_ms, 0, "no dynamic_batching: no wait");
    assert_eq!(settings.replicas, 1);
    assert_eq!(settings.device, DevicePreference::Auto);
    assert!(settings.sequence.is_none());
    let json = parse(SIMPLE).unwrap().json;
    assert_eq!(json["input"][0]["data_type"], "TYPE_INT32");
    assert_eq!(json["input"][1]["dims"], serde_json::json!([16]));
    assert_eq!(json["max_batch_size"], 8);
}

#[test]
fn sequence_batching_becomes_the_sequence_settings() {
    let settings = settings_of(DYNA_SEQUENCE, "simple_dyna_sequence").unwrap();
    let sequence = settings.sequence.unwrap();
    assert_eq!(sequence.start.as_deref(), Some("START"));
    assert_eq!(sequence.end.as_deref(), Some("END"));
    assert_eq!(sequence.ready.as_deref(), Some("READY"));
    assert_eq!(sequence.corrid.as_deref(), Some("CORRID"));
    assert_eq!(sequence.max_sequence_idle_ms, 10_000);
    assert_eq!(sequence.max_sequences, 1024);
    assert_eq!(settings.replicas, 2);
    assert_eq!(settings.device, DevicePreference::Cpu);
    // Unknown parameters are the backend's business (logged, ignored).
    assert_eq!(settings.intra_op_threads, None);
}

#[test]
fn control_values_other_than_zero_and_one_are_refused() {
    let text = r#"
sequence_batching {
  control_input [ { name: "START"  control [ { kind: CONTROL_SEQUENCE_START  int32_false_true: [ 1, 0 ] } ] } ]
}"#;
    let err = settings_of(text, "m").unwrap_err();
    assert!(err.contains("'START'") && err.contains("0 and 1"), "{err}");
    let fp32 = r#"
sequence_batching {
  control_input [ { name: "S"  control [ { kind: CONTROL_SEQUENCE_START  fp32_false_true: [ 0, 1 ] } ] } ]
  state [ { input_name: "IN_STATE"  output_name: "OUT_STATE"  data_type: TYPE_FP32  dims: [ -1, 4 ] } ]
}"#;
    let sequence = settings_of(fp32, "m").unwrap().sequence.unwrap();
    assert_eq!(sequence.start.as_deref(), Some("S"));
    assert_eq!(sequence.state[0].input, "IN_STATE");
    assert_eq!(sequence.state[0].output, "OUT_STATE");
}

#[test]
fn dynamic_batching_and_parameters_become_settings() {
    let text = r#"
max_batch_size: 32
dynamic_batching {
  max_queue_delay_microseconds: 100
  preferred_batch_size: [ 4, 8 ]
  default_queue_policy { max_queue_size: 16 }
}
parameters { key: "intra_op_thread_count"  value { string_value: "2" } }
instance_group [ { count: 1  kind: KIND_GPU  gpus: [ 1 ] }, { count: 2  kind: KIND_GPU  gpus: [ 0, 1 ] } ]
"#;
    let settings = settings_of(text, "m").unwrap();
    assert_eq!(settings.max_batch_size, 32);
    assert_eq!(settings.batch_window_ms, 1, "100 us rounds up to 1 ms");
    assert_eq!(settings.queue_capacity, 16);
    assert_eq!(settings.intra_op_threads, Some(2));
    // A count per GPU listed: 1 x [1] + 2 x [0, 1].
    assert_eq!(settings.replicas, 5);
    assert_eq!(settings.device, DevicePreference::Gpu);
    assert_eq!(settings.gpus, Some(vec![1, 0]));
    // An unbatched model runs each request alone.
    assert_eq!(
        settings_of("max_batch_size: 0", "m")
            .unwrap()
            .max_batch_size,
        1
    );
}

#[test]
fn fields_gantry_does_not_honour_are_named() {
    for (text, named) in [
        (
            "ensemble_scheduling { step [ { model_name: \"a\" } ] }",
            "`ensemble_scheduling`",
        ),
        (
            "input [ { name: \"x\" allow_ragged_batch: true } ]",
            "`input.allow_ragged_batch`",
        ),
        ("optimization { graph { level: 1 } }", "`optimization`"),
        ("response_cache { enable: true }", "`response_cache`"),
    ] {
        let err = parse(text).map(|_| ()).unwrap_err();
        assert!(
            err.contains(named) && err.contains("not supported by Gantry"),
            "{text}: {err}"
        );
    }
    let two = parse("response_cache { enable: true }\noptimization { priority: PRIORITY_MAX }")
        .map(|_| ())
        .unwrap_err();
    assert!(
        two.contains("`optimization`, `response_cache` are"),
        "{two}"
    );
}

#[test]
fn optional_inputs_are_named_in_the_settings() {
    let text = r#"
max_batch_size: 8
input [
  { name: "x"  data_type: TYPE_FP32  dims: [ 4 ] },
  { name: "bias"  data_type: TYPE_FP32  dims: [ 4 ]  optional: true }
]
"#;
    let settings = settings_of(text, "m").unwrap();
    assert_eq!(settings.optional_inputs, vec!["bias".to_string()]);
}

#[test]
fn reshapes_are_read_and_checked() {
    let text = r#"
max_batch_size: 1
input [ { name: "data_0"  data_type: TYPE_FP32  dims: [ 16 ]  reshape { shape: [ 1, 16 ] } } ]
output [ { name: "fc6_1"  data_type: TYPE_FP32  dims: [ 1000 ]  reshape { shape: [ 1000, 1, 1 ] } } ]
"#;
    let reshape = settings_of(text, "m").unwrap().reshape;
    assert_eq!(reshape.len(), 2);
    assert!(reshape[0].input && reshape[0].batched);
    assert_eq!(reshape[0].model_dims, vec![1, 16]);
    assert!(!reshape[1].input);
    assert_eq!(reshape[1].dims, vec![1000]);
    let bad = "output [ { name: \"y\" dims: [ 4 ] reshape { shape: [ 5 ] } } ]";
    let err = settings_of(bad, "m").unwrap_err();
    assert!(
        err.contains("output 'y'") && err.contains("4 elements"),
        "{err}"
    );
}

#[test]
fn other_platforms_names_and_bad_text_are_refused() {
    for (text, named) in [
        ("platform: \"tensorflow_graphdef\"", "platform 'tensorflow_graphdef'"),
        ("backend: \"python\"", "backend 'python'"),
        ("name: \"other\"", "differs from the model's folder 'm'"),
        ("max_batch_size: -1", "max_batch_size"),
        ("instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]", "mixes kinds"),
        ("instance_group [ { kind: KIND_MODEL } ]", "KIND_MODEL"),
        ("instance_group [ { count: -1 } ]", "count must be at least 1"),
        ("output [ { name: \"a\" label_filename: \"a.txt\" }, { name: \"b\" label_filename: \"b.txt\" } ]", "more than one output"),
        ("output [ { name: \"a\" label_filename: \"../a.txt\" } ]", "in the model's folder"),
    ] {
        let err = settings_of(text, "m").unwrap_err();
        assert!(err.contains(named), "{text}: {err}");
    }
    let err = parse("max_batch_size: \"eight\"").map(|_| ()).unwrap_err();
    assert!(
        err.contains("not a valid Triton model configuration"),
        "{err}"
    );
    let err = parse("no_such_field: 1").map(|_| ()).unwrap_err();
    assert!(err.contains("no_such_field"), "{err}");
}

#[test]
fn the_version_policy_picks_one_version_folder() {
    let dir = tempfile::tempdir().unwrap();
    for v in ["1", "2", "3", "01"] {
        write(dir.path(), &format!("m/{v}/model.onnx"), "x");
    }
    let folder = dir.path().join("m");
    let policy = |text: &str| parse(text).unwrap().fields.version_policy;
    assert_eq!(select_version(&folder, None), Ok(3));
    assert_eq!(
        select_version(
            &folder,
            policy("version_policy { latest { num_versions: 1 } }").as_ref()
        ),
        Ok(3)
    );
    assert_eq!(
        select_version(
            &folder,
            policy("version_policy { specific { versions: [ 2 ] } }").as_ref()
        ),
        Ok(2)
    );
    for (text, named) in [
        ("version_policy { all { } }", "versions [1, 2, 3]"),
        (
            "version_policy { latest { num_versions: 2 } }",
            "versions [2, 3]",
        ),
        (
            "version_policy { specific { versions: [ 7 ] } }",
            "version 7",
        ),
        ("version_policy { latest { } }", "at least 1"),
    ] {
        let err = select_version(&folder, policy(text).as_ref()).unwrap_err();
        assert!(err.contains(named), "{text}: {err}");
    }
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    assert!(select_version(&empty, None)
        .unwrap_err()
        .contains("no version folder"));
}

#[test]
fn a_triton_folder_is_read_with_its_version_file_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let config = "platform: \"onnxruntime_onnx\"\nmax_batch_size: 1\ndefault_model_filename: \"net.onnx\"\n\
                  input [ { name: \"data_0\" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 4, 4 ] } ]\n\
                  output [ { name: \"prob\" data_type: TYPE_FP32 dims: [ 3 ] label_filename: \"labels.txt\" } ]\n";
    write(dir.path(), "net/config.pbtxt", config);
    write(dir.path(), "net/2/net.onnx", "x");
    write(dir.path(), "net/labels.txt", "a\nb\nc\n");
    let read = read(&dir.path().join("net"), "net", None).unwrap();
    assert_eq!(read.version, 2);
    assert!(read.onnx_path.ends_with("net/2/net.onnx"));
    assert_eq!(read.labels_file, Some(dir.path().join("net/labels.txt")));
    assert_eq!(read.config["input"][0]["format"], "FORMAT_NCHW");
    write(dir.path(), "both/config.pbtxt", "");
    write(dir.path(), "both/model.toml", "");
    write(dir.path(), "both/1/model.onnx", "x");
    assert!(super::read(&dir.path().join("both"), "both", None)
        .unwrap_err()
        .contains("not both"));
    write(dir.path(), "nofile/config.pbtxt", "");
    write(dir.path(), "nofile/1/other.onnx", "x");
    assert!(super::read(&dir.path().join("nofile"), "nofile", None)
        .unwrap_err()
        .contains("file not found"));
}

#[test]
fn one_repository_holds_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "native/model.onnx", "x");
    write(dir.path(), "simple/config.pbtxt", SIMPLE);
    write(dir.path(), "simple/1/model.onnx", "x");
    // No config.pbtxt: Triton completes one for an ONNX model.
    write(dir.path(), "bare/3/model.onnx", "x");
    write(
        dir.path(),
        "graphdef/config.pbtxt",
        "platform: \"tensorflow_graphdef\"",
    );
    write(dir.path(), "graphdef/1/model.graphdef", "x");
    write(dir.path(), "scripts/fetch.sh", "");
    let scan = repository::scan(dir.path()).unwrap();
    let served: Vec<(&str, &str)> = scan
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.version.as_str()))
        .collect();
    assert_eq!(served[0], ("bare", "3"));
    assert_eq!(served[1].0, "native");
    assert_eq!(served[1].1.len(), 64, "Gantry's layout: the file's SHA-256");
    assert_eq!(served[2], ("simple", "1"));
    let simple = &scan.models[2];
    assert_eq!(simple.sha256.len(), 64);
    assert_eq!(simple.settings.max_batch_size, 8);
    assert_eq!(simple.triton_config.as_ref().unwrap()["name"], "simple");
    assert!(scan.models[1].triton_config.is_none());
    assert_eq!(scan.errors.len(), 1);
    assert_eq!(scan.errors[0].model, "graphdef");
    assert!(scan.errors[0].error.contains("tensorflow_graphdef"));
    assert_eq!(scan.skipped.len(), 1);
    assert_eq!(scan.skipped[0].model, "scripts");
    assert!(scan.skipped[0].error.contains("config.pbtxt"));
}

#[test]
fn lists_of_messages_need_no_colon() {
    for text in [
        "input [ { name: \"x\" dims: [ 3 ] } ]",
        "input [\n  {\n    name: \"x\"\n    dims: [ 3 ]\n  }\n]",
        "input: [ { name: \"x\" dims: [3] } ]",
        "input # the inputs\n [ { name: \"x\" dims: [ 3 ] } ]",
    ] {
        let json = parse(text).unwrap().json;
        assert_eq!(json["input"][0]["dims"], serde_json::json!([3]), "{text}");
    }
    // A '[' inside a string or a comment is left alone.
    let json = parse("name: \"a [b\" # c [\n").unwrap().json;
    assert_eq!(json["name"], "a [b");
    assert_eq!(
        colons_before_lists("a [ { b [ 1 ] } ] c: [ 2 ]"),
        "a: [ { b: [ 1 ] } ] c: [ 2 ]"
    );
}

#[test]
fn a_loads_override_replaces_the_files_fields() {
    let overrides: Map<String, Value> = serde_json::from_str(
        r#"{"max_batch_size": "16", "dynamic_batching": {"max_queue_delay_microseconds": "3000"}}"#,
    )
    .unwrap();
    let parsed = parse_with(SIMPLE, Some(&overrides)).unwrap();
    assert_eq!(parsed.json["max_batch_size"], 16);
    assert_eq!(
        parsed.json["input"][0]["name"], "INPUT0",
        "the rest is the file's"
    );
    let settings = translate(&parsed, "simple").unwrap().settings;
    assert_eq!((settings.max_batch_size, settings.batch_window_ms), (16, 3));
    for (text, says) in [
        (r#"{"replicas": 2}"#, "replicas"),
        (r#"{"max_batch_size": "many"}"#, "max_batch_size"),
        (
            r#"{"optimization": {"priority": "PRIORITY_MAX"}}"#,
            "`optimization`",
        ),
    ] {
        let overrides: Map<String, Value> = serde_json::from_str(text).unwrap();
        let err = parse_with(SIMPLE, Some(&overrides))
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains(says), "{text}: {err}");
    }
}

#[test]
fn model_warmup_samples_are_read_with_their_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m/warmup/features.bin", &"\0".repeat(8));
    let text = r#"
model_warmup [
  { name: "zeros"  batch_size: 2  count: 3
    inputs { key: "x"  value: { data_type: TYPE_FP32  dims: [ 4 ]  zero_data: true } } },
  { name: "file"  batch_size: 1
    inputs { key: "x"  value: { data_type: TYPE_FP32  dims: [ 2 ]  input_data_file: "features.bin" } }
    inputs { key: "s"  value: { data_type: TYPE_STRING  dims: [ 1 ]  random_data: true } } }
]"#;
    let parsed = parse(text).unwrap();
    let samples =
        super::settings::warmup_samples(&parsed.fields.model_warmup, &dir.path().join("m"))
            .unwrap();
    assert_eq!(
        (
            samples[0].name.as_str(),
            samples[0].batch_size,
            samples[0].count
        ),
        ("zeros", 2, 3)
    );
    assert_eq!(samples[0].inputs[0].dims, vec![4]);
    let file = &samples[1];
    let x = file.inputs.iter().find(|i| i.name == "x").unwrap();
    assert_eq!(x.data, crate::warmup_sample::WarmupData::File(vec![0; 8]));
    let s = file.inputs.iter().find(|i| i.name == "s").unwrap();
    assert_eq!(s.dtype, crate::tensor::DataType::Bytes);
    for (text, says) in [
        (
            r#"model_warmup [ { name: "w" inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 1 ] input_data_file: "gone.bin" } } } ]"#,
            "gone.bin",
        ),
        (
            r#"model_warmup [ { name: "w" inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 1 ] input_data_file: "../x" } } } ]"#,
            "warmup/ folder",
        ),
        (
            r#"model_warmup [ { name: "w" inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 1 ] } } } ]"#,
            "sets none of",
        ),
        (
            r#"model_warmup [ { name: "w" inputs { key: "x" value: { dims: [ 1 ] zero_data: true } } } ]"#,
            "no datatype",
        ),
    ] {
        let parsed = parse(text).unwrap();
        let err =
            super::settings::warmup_samples(&parsed.fields.model_warmup, &dir.path().join("m"))
                .unwrap_err();
        assert!(
            err.contains(says) && err.contains("model_warmup 'w'"),
            "{text}: {err}"
        );
    }
}

#[test]
fn the_queue_policy_timeout_becomes_the_models_deadline() {
    let text = "dynamic_batching { default_queue_policy { default_timeout_microseconds: 250000 allow_timeout_override: true max_queue_size: 9 } }";
    let settings = settings_of(text, "m").unwrap();
    let policy = settings.queue_timeout.unwrap();
    assert_eq!(policy.default, std::time::Duration::from_millis(250));
    assert!(policy.allow_override);
    assert_eq!(settings.queue_capacity, 9);
    assert!(settings_of("dynamic_batching { }", "m")
        .unwrap()
        .queue_timeout
        .is_none());
    let delay = "dynamic_batching { default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1 } }";
    assert!(settings_of(delay, "m")
        .unwrap_err()
        .contains("timeout_action DELAY"));
}

#[test]
fn priority_levels_map_onto_gantrys_three() {
    let settings = settings_of(
        "dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
        "m",
    )
    .unwrap();
    assert_eq!(
        settings.priority_levels,
        Some((2, crate::priority::Priority::Normal))
    );
    assert_eq!(
        settings.priority_of(None),
        Ok(crate::priority::Priority::Normal)
    );
    assert_eq!(
        settings.priority_of(Some(crate::priority::Priority::High)),
        Ok(crate::priority::Priority::High)
    );
    assert!(settings
        .priority_of(Some(crate::priority::Priority::Low))
        .is_err());
    for (text, says) in [
        (
            "dynamic_batching { priority_levels: 4 default_priority_level: 1 }",
            "three priority levels",
        ),
        (
            "dynamic_batching { priority_levels: 2 }",
            "between 1 and priority_levels",
        ),
        (
            "dynamic_batching { default_priority_level: 1 }",
            "needs priority_levels",
        ),
    ] {
        assert!(settings_of(text, "m").unwrap_err().contains(says), "{text}");
    }
}
