use super::*;

fn message(fields: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, bytes) in fields {
        put_bytes(&mut out, *number, bytes);
    }
    out
}

fn varint_field(number: u64, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_key(&mut out, number, 0);
    encode_varint(value, &mut out);
    out
}

/// A TensorProto: name (8), data_type (2) and raw_data (9).
fn tensor(name: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = varint_field(2, 1);
    put_bytes(&mut out, 8, name.as_bytes());
    put_bytes(&mut out, TENSOR_RAW_DATA, raw);
    out
}

/// A ModelProto: ir_version (1), a graph with a node (1) and the given
/// initializers, and a field this code does not know (99).
fn model(initializers: &[Vec<u8>]) -> Vec<u8> {
    let mut graph = message(&[(1, b"node".to_vec())]);
    for t in initializers {
        put_bytes(&mut graph, GRAPH_INITIALIZER, t);
    }
    let mut out = varint_field(1, 8);
    put_bytes(&mut out, MODEL_GRAPH, &graph);
    put_bytes(&mut out, 99, b"kept as it is");
    out
}

/// The (number, payload or value) pairs of a message.
fn read(bytes: &[u8]) -> Vec<(u64, Vec<u8>, u64)> {
    fields(bytes, 0..bytes.len())
        .unwrap()
        .into_iter()
        .map(|f| (f.number, bytes[f.payload].to_vec(), f.value))
        .collect()
}

#[test]
fn large_initializers_move_to_aligned_offsets_and_the_rest_stays_byte_for_byte() {
    let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let second: Vec<u8> = vec![7; 5000];
    let small = vec![1, 2, 3, 4];
    let original = model(&[
        tensor("w1", &big),
        tensor("b", &small),
        tensor("w2", &second),
    ]);
    let split = split(&original[..]).unwrap().expect("a split");
    assert_eq!(split.weights.len(), 2);
    assert_eq!(split.weights[0].0, 0);
    assert_eq!(
        split.weights[1].0, 10_048,
        "the next multiple of 64 after 10,000"
    );
    assert_eq!(&original[split.weights[0].1.clone()], &big[..]);
    assert_eq!(&original[split.weights[1].1.clone()], &second[..]);

    let top = read(&split.graph);
    assert_eq!(top[0], (1, Vec::new(), 8));
    assert_eq!(top[2].0, 99);
    assert_eq!(top[2].1, b"kept as it is");
    let graph = read(&top[1].1);
    assert_eq!(graph[0].1, b"node");
    let tensors: Vec<_> = graph.iter().filter(|f| f.0 == GRAPH_INITIALIZER).collect();
    assert_eq!(tensors.len(), 3);
    // The small one is copied as it was.
    assert_eq!(tensors[1].1, tensor("b", &small));
    let w2 = read(&tensors[2].1);
    assert!(w2.iter().all(|f| f.0 != TENSOR_RAW_DATA));
    assert!(w2.iter().any(|f| f.0 == 8 && f.1 == b"w2"));
    let external: Vec<(String, String)> = w2
        .iter()
        .filter(|f| f.0 == TENSOR_EXTERNAL_DATA)
        .map(|f| {
            let entry = read(&f.1);
            (
                String::from_utf8(entry[0].1.clone()).unwrap(),
                String::from_utf8(entry[1].1.clone()).unwrap(),
            )
        })
        .collect();
    let expected = [
        ("location", "weights.bin"),
        ("offset", "10048"),
        ("length", "5000"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(external, expected);
    assert!(w2
        .iter()
        .any(|f| f.0 == TENSOR_DATA_LOCATION && f.2 == LOCATION_EXTERNAL));
}

#[test]
fn models_without_large_or_with_external_weights_are_not_split() {
    assert!(split(&model(&[tensor("b", &[1, 2, 3])])[..])
        .unwrap()
        .is_none());
    let mut external = tensor("w", &[]);
    external.extend(varint_field(TENSOR_DATA_LOCATION, LOCATION_EXTERNAL));
    let big = tensor("big", &vec![0; 8192]);
    assert!(split(&model(&[big, external])[..]).unwrap().is_none());
}

#[test]
fn a_truncated_file_is_an_error_not_a_panic() {
    let original = model(&[tensor("w1", &vec![3; 9000])]);
    for cut in [1, 3, 10, 100, original.len() - 1] {
        assert!(split(&original[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn the_copy_is_written_once_beside_its_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.onnx");
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, model(&[tensor("w", &big)])).unwrap();
    let copies = dir.path().join("copies");
    usable_dir(&copies).unwrap();
    let graph = write_split(&file, "abc", &copies).unwrap().unwrap();
    assert_eq!(graph, copies.join("abc").join("model.onnx"));
    let weights = std::fs::read(copies.join("abc").join(WEIGHTS_FILE)).unwrap();
    assert_eq!(weights, big);
    // Found the second time, not written again.
    std::fs::write(copies.join("abc").join(WEIGHTS_FILE), b"marker").unwrap();
    assert_eq!(write_split(&file, "abc", &copies).unwrap().unwrap(), graph);
    assert_eq!(
        std::fs::read(copies.join("abc").join(WEIGHTS_FILE)).unwrap(),
        b"marker"
    );
    let names: Vec<_> = std::fs::read_dir(&copies)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("abc")],
        "no staging folder left"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_directory_in_memory_is_refused() {
    if std::path::Path::new("/dev/shm").is_dir() {
        let refused = usable_dir(std::path::Path::new("/dev/shm"));
        assert!(refused.unwrap_err().contains("tmpfs"));
    }
}
