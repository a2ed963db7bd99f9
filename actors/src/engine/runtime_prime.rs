//! ONNX Runtime's one-time setup, done once at startup rather than by the
//! first model. The first session a process opens builds the runtime's
//! kernel registries and allocators: about 9 MB that stay for the life of
//! the process (measured with ONNX Runtime 1.31: an Identity model's
//! session adds 9 MB, and an MLP of a 7 MB file then adds 8 MB; opened
//! first, the same MLP adds 17). Left to the first model, that memory
//! would count in its measured footprint and be reserved again whenever it
//! reloads, though it never leaves with it. Opening one session of a
//! one-node graph (written here, so no file ships for it) makes it part of
//! the process's base, before the memory budget takes its measure.

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use prost::encoding::{encode_key, encode_varint, WireType};

/// Opens and runs a session of a one-node graph (`y = Identity(x)`, one
/// float) in `env`; the session is dropped once it ran.
pub(super) fn prime(env: &Environment) -> Result<(), String> {
    let model = identity_model();
    let mut session = Session::builder(env)
        .and_then(|mut b| b.commit_from_memory(&model))
        .map_err(|e| format!("cannot open a session: {e}"))?;
    let x = Tensor::from_array(([1usize], vec![0.0f32])).map_err(|e| e.to_string())?;
    session
        .run(ort::inputs!["x" => x])
        .map_err(|e| format!("cannot run a session: {e}"))?;
    Ok(())
}

/// `bytes` as field `tag`, length-delimited.
fn field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `value` as field `tag`, a varint.
fn number(out: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(value, out);
}

/// An ONNX `ModelProto` (onnx.proto3) of `y = Identity(x)` for a float
/// tensor of shape [1]: IR version 8, opset 13.
fn identity_model() -> Vec<u8> {
    // ValueInfoProto { name = 1, type = 2: TypeProto { tensor_type = 1:
    // { elem_type = 1 (FLOAT), shape = 2: { dim = 1: { dim_value = 1 } } } } }
    let value_info = |name: &str| {
        let mut dim = Vec::new();
        number(&mut dim, 1, 1);
        let mut shape = Vec::new();
        field(&mut shape, 1, &dim);
        let mut tensor = Vec::new();
        number(&mut tensor, 1, 1);
        field(&mut tensor, 2, &shape);
        let mut type_proto = Vec::new();
        field(&mut type_proto, 1, &tensor);
        let mut info = Vec::new();
        field(&mut info, 1, name.as_bytes());
        field(&mut info, 2, &type_proto);
        info
    };
    // NodeProto { input = 1, output = 2, op_type = 4 }
    let mut node = Vec::new();
    field(&mut node, 1, b"x");
    field(&mut node, 2, b"y");
    field(&mut node, 4, b"Identity");
    // GraphProto { node = 1, name = 2, input = 11, output = 12 }
    let mut graph = Vec::new();
    field(&mut graph, 1, &node);
    field(&mut graph, 2, b"prime");
    field(&mut graph, 11, &value_info("x"));
    field(&mut graph, 12, &value_info("y"));
    // OperatorSetIdProto { domain = 1 (""), version = 2 }
    let mut opset = Vec::new();
    number(&mut opset, 2, 13);
    // ModelProto { ir_version = 1, graph = 7, opset_import = 8 }
    let mut model = Vec::new();
    number(&mut model, 1, 8);
    field(&mut model, 7, &graph);
    field(&mut model, 8, &opset);
    model
}
