//! Stateful models, served sequence by sequence (Triton's sequence
//! batching). A model with a `[sequence]` table takes requests that carry a
//! sequence id; the first one says `sequence_start`, the last
//! `sequence_end`. For each request the server fills the control inputs
//! the table names (START, END, READY, CORRID) and the implicit state: each
//! state input gets the value its output had after the sequence's previous
//! request (zeros at the start), and state outputs are kept, not answered.
//!
//! A sequence's requests run one at a time and in order (each holds its
//! sequence's lock while it runs), on the replica that ran the sequence's
//! first request while that replica is ready (the batcher honours the
//! pin); requests of different sequences share batches. A sequence idle for
//! `max_sequence_idle_ms` is released; a request for a sequence that is not
//! open and does not start one is a 400. The result cache is never asked:
//! the same inputs mean something else at another point of a sequence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_actors::repository::SequenceSettings;
use gantry_actors::signature::{ModelSignature, TensorSpec};
use gantry_actors::tensor::{bytes_data, element_count, DataType, Tensor};
use gantry_actors::{InferError, ModelHandle};
use half::{bf16, f16};
use tokio::sync::Mutex as AsyncMutex;

use super::{InferenceService, Pending, PredictCall, Prediction};
use crate::cache::CacheKey;

/// Triton's sequence id: a number (not 0) or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SequenceId {
    Number(u64),
    Text(String),
}

impl std::fmt::Display for SequenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceId::Number(n) => write!(f, "{n}"),
            SequenceId::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl SequenceCall {
    /// Triton's `sequence_id`, `sequence_start` and `sequence_end` request
    /// parameters; `None` without an id (or with id 0 or "", Triton's "no
    /// sequence").
    pub fn from_parameters(
        parameters: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<SequenceCall>, String> {
        let flag = |key: &str| match parameters.get(key) {
            None => Ok(false),
            Some(serde_json::Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format!(
                "parameters.{key} must be true or false, not {other}"
            )),
        };
        let (start, end) = (flag("sequence_start")?, flag("sequence_end")?);
        let id = match parameters.get("sequence_id") {
            None => None,
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(0) => None,
                Some(n) => Some(SequenceId::Number(n)),
                None => {
                    return Err(format!(
                        "parameters.sequence_id must be a positive integer or a string, not {n}"
                    ))
                }
            },
            Some(serde_json::Value::String(t)) if t.is_empty() => None,
            Some(serde_json::Value::String(t)) => Some(SequenceId::Text(t.clone())),
            Some(other) => {
                return Err(format!(
                    "parameters.sequence_id must be a positive integer or a string, not {other}"
                ))
            }
        };
        match id {
            Some(id) => Ok(Some(SequenceCall { id, start, end })),
            None if start || end => {
                Err("sequence_start and sequence_end need a sequence_id".into())
            }
            None => Ok(None),
        }
    }
}

/// A request's place in its sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceCall {
    pub id: SequenceId,
    pub start: bool,
    pub end: bool,
}

/// One open sequence.
#[derive(Debug)]
struct OpenSequence {
    /// The version it started on: a replaced model starts sequences anew.
    version: String,
    /// State values by input name, after the last request.
    state: HashMap<String, Tensor>,
    /// The replica that ran its first request.
    pin: Option<usize>,
    last_used: Instant,
    /// Ended (or replaced) while a request waited for it.
    closed: bool,
}

type Slot = Arc<AsyncMutex<OpenSequence>>;

/// Every model's open sequences.
#[derive(Default)]
pub struct Sequences {
    open: Mutex<HashMap<(String, SequenceId), Slot>>,
}

impl Sequences {
    /// Open sequences of `model` (for stats and tests).
    pub fn count(&self, model: &str) -> usize {
        let table = self.open.lock().unwrap_or_else(|e| e.into_inner());
        table.keys().filter(|(m, _)| m == model).count()
    }

    /// The sequence `call` belongs to: a new one on start, else the open
    /// one (400 when there is none).
    fn slot(
        &self,
        model: &ModelHandle,
        call: &SequenceCall,
        settings: &SequenceSettings,
    ) -> Result<Slot, InferError> {
        let now = Instant::now();
        let idle = Duration::from_millis(settings.max_sequence_idle_ms);
        let name = model.name().to_string();
        let mut table = self.open.lock().unwrap_or_else(|e| e.into_inner());
        release_idle(&mut table, &name, idle, now);
        let key = (name, call.id.clone());
        if call.start {
            let open = table.keys().filter(|(m, _)| *m == key.0).count();
            if !table.contains_key(&key) && open >= settings.max_sequences {
                return Err(InferError::TooManySequences {
                    model: key.0,
                    limit: settings.max_sequences,
                });
            }
            let slot = Arc::new(AsyncMutex::new(OpenSequence {
                version: model.spec.sha256.clone(),
                state: HashMap::new(),
                pin: None,
                last_used: now,
                closed: false,
            }));
            if let Some(old) = table.insert(key, slot.clone()) {
                if let Ok(mut old) = old.try_lock() {
                    old.closed = true;
                }
            }
            return Ok(slot);
        }
        table.get(&key).cloned().ok_or_else(|| {
            InferError::Sequence(format!(
                "sequence {} of model '{}' is not open (never started, ended, or released \
                 after {} ms idle); start it with sequence_start",
                call.id, key.0, settings.max_sequence_idle_ms
            ))
        })
    }

    fn close(&self, model: &str, id: &SequenceId, slot: &Slot) {
        let mut table = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let key = (model.to_string(), id.clone());
        if table.get(&key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            table.remove(&key);
        }
    }
}

/// Drops `model`'s sequences idle for `idle` (those running a request are
/// not idle).
fn release_idle(
    table: &mut HashMap<(String, SequenceId), Slot>,
    model: &str,
    idle: Duration,
    now: Instant,
) {
    table.retain(|(m, _), slot| {
        m != model
            || match slot.try_lock() {
                Ok(open) => now.saturating_duration_since(open.last_used) < idle,
                Err(_) => true,
            }
    });
}

impl InferenceService {
    /// Runs one request of a sequence model: its sequence's state and
    /// control inputs added, its state outputs kept for the next request.
    pub(super) async fn predict_in_sequence(
        &self,
        model: Arc<ModelHandle>,
        mut call: PredictCall,
        started: Instant,
        pending: &mut Pending,
    ) -> Result<Prediction, InferError> {
        let name = model.name().to_string();
        let Some(settings) = model.spec.settings.sequence.clone() else {
            return Err(InferError::Sequence(format!(
                "model '{name}' does not serve sequences; leave out the sequence parameters"
            )));
        };
        let Some(sequence) = call.sequence.take() else {
            return Err(InferError::Sequence(format!(
                "model '{name}' serves sequences: send parameters.sequence_id, with \
                 sequence_start on a sequence's first request"
            )));
        };
        let deadline = self.deadline(&model, call.timeout, started);
        let signature = self.signature_of(&model, deadline).await?.clone();
        for input in settings.server_inputs() {
            if call.inputs.iter().any(|(n, _)| n == input) {
                return Err(InferError::Sequence(format!(
                    "input '{input}' is filled by the server for sequences; leave it out"
                )));
            }
        }
        let slot = self.sequences.slot(&model, &sequence, &settings)?;
        let mut open = slot.lock().await;
        if open.closed || open.version != model.spec.sha256 {
            return Err(InferError::Sequence(format!(
                "sequence {} of model '{name}' ended (or the model was replaced) while this \
                 request waited; start it again with sequence_start",
                sequence.id
            )));
        }
        let with_batch = carries_batch(&signature, &call.inputs);
        if signature.is_batched() && with_batch && signature.items_of(&call.inputs) != 1 {
            return Err(InferError::Sequence(
                "a request of a sequence holds one item (batch dimension 1)".into(),
            ));
        }
        let strip = signature.is_batched() && !with_batch;
        let extra = server_inputs(&signature, &settings, &sequence, &open.state, strip)?;
        call.inputs.extend(extra);
        call.use_cache = false;
        call.pin = open.pin;
        if self.log.is_some() {
            let key = CacheKey::of(&name, &model.spec.sha256, &call.inputs);
            pending.input_sha256 = Some(key.hex());
        }
        let mut prediction = self.infer(model.clone(), call, started, pending).await?;
        let mut outputs = prediction.outputs.as_ref().clone();
        for pair in &settings.state {
            let Some(at) = outputs.iter().position(|(n, _)| *n == pair.output) else {
                return Err(InferError::Inference(format!(
                    "model.toml [sequence] names state output '{}', which the model does not answer",
                    pair.output
                )));
            };
            let (_, value) = outputs.remove(at);
            open.state.insert(pair.input.clone(), value);
        }
        prediction.outputs = Arc::new(outputs);
        open.pin = open.pin.or(prediction.replica);
        open.last_used = Instant::now();
        if sequence.end {
            open.closed = true;
            drop(open);
            self.sequences.close(&name, &sequence.id, &slot);
        }
        Ok(prediction)
    }
}

/// True when the request's inputs carry the batch dimension (or the model
/// has none to leave out).
fn carries_batch(signature: &ModelSignature, inputs: &[(String, Tensor)]) -> bool {
    signature
        .inputs
        .iter()
        .find_map(|spec| {
            let (_, t) = inputs.iter().find(|(n, _)| *n == spec.name)?;
            Some(t.shape.len() == spec.dims.len())
        })
        .unwrap_or(true)
}

/// The control and state inputs of one request.
fn server_inputs(
    signature: &ModelSignature,
    settings: &SequenceSettings,
    call: &SequenceCall,
    state: &HashMap<String, Tensor>,
    strip_batch: bool,
) -> Result<Vec<(String, Tensor)>, InferError> {
    let spec = |name: &str| -> Result<&TensorSpec, InferError> {
        signature
            .inputs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                InferError::Inference(format!(
                    "model.toml [sequence] names input '{name}', which the model does not have"
                ))
            })
    };
    let shape_of = |spec: &TensorSpec, dims: Option<&Vec<usize>>| -> Vec<usize> {
        let mut shape: Vec<usize> = match dims {
            Some(dims) => dims.clone(),
            None => spec.dims.iter().map(|d| d.unwrap_or(1)).collect(),
        };
        if strip_batch && dims.is_none() && !shape.is_empty() {
            shape.remove(0);
        }
        shape
    };
    let mut out = Vec::new();
    let controls = [
        (&settings.start, Control::Flag(call.start)),
        (&settings.end, Control::Flag(call.end)),
        (&settings.ready, Control::Flag(true)),
        (&settings.corrid, Control::Id(&call.id)),
    ];
    for (name, value) in controls {
        let Some(name) = name else { continue };
        let spec = spec(name)?;
        let tensor = filled(spec.dtype, shape_of(spec, None), &value).map_err(|why| {
            InferError::Inference(format!("sequence control input '{name}': {why}"))
        })?;
        out.push((name.clone(), tensor));
    }
    for pair in &settings.state {
        let spec = spec(&pair.input)?;
        let tensor = match state.get(&pair.input) {
            Some(value) if !call.start => value.clone(),
            _ => Tensor::zeros(spec.dtype, shape_of(spec, pair.dims.as_ref())),
        };
        out.push((pair.input.clone(), tensor));
    }
    Ok(out)
}

/// What a control input is set to.
enum Control<'a> {
    Flag(bool),
    Id(&'a SequenceId),
}

/// A tensor of `shape` whose every element is `value` in `dtype`.
fn filled(dtype: DataType, shape: Vec<usize>, value: &Control) -> Result<Tensor, String> {
    let count = element_count(&shape);
    let number: Option<u64> = match value {
        Control::Flag(flag) => Some(u64::from(*flag)),
        Control::Id(SequenceId::Number(n)) => Some(*n),
        Control::Id(SequenceId::Text(_)) => None,
    };
    if dtype == DataType::Bytes {
        let text = match value {
            Control::Id(SequenceId::Text(t)) => t.clone(),
            _ => number.unwrap_or_default().to_string(),
        };
        let data = bytes_data(std::iter::repeat_n(text.as_bytes(), count));
        return Tensor::new(dtype, shape, data).map_err(|e| e.to_string());
    }
    let n = number.ok_or("a text sequence id needs a BYTES input")?;
    let element: Vec<u8> = match dtype {
        DataType::Bool => vec![u8::from(n != 0)],
        DataType::Uint8 => u8::try_from(n)
            .map_err(|e| e.to_string())?
            .to_le_bytes()
            .to_vec(),
        DataType::Uint16 => u16::try_from(n)
            .map_err(|e| e.to_string())?
            .to_le_bytes()
            .to_vec(),
        DataType::Uint32 => u32::try_from(n)
            .map_err(|e| e.to_string())?
            .to_le_bytes()
            .to_vec(),
        DataType::Uint64 => n.to_le_bytes().to_vec(),
        DataType::Int8 => i8::try_from(n)
            .map_err(|e| e.to_string())?
            .to_le_bytes()
            .to_vec(),
        DataType::Int16 => i16::try_from(n)
            .map_err(|e| e.to_string())?
            .to_le_bytes()
            .to_vec(),
        DataType::Int32 => i32::try_from(n)
            .map_err(|e| e.to_string())?
            .to_le_bytes()
            .to_vec(),
        DataType::Int64 => i64::try_from(n)
            .map_err(|e| e.to_string())?
            .to_le_bytes()
            .to_vec(),
        DataType::Fp32 => (n as f32).to_le_bytes().to_vec(),
        DataType::Fp64 => (n as f64).to_le_bytes().to_vec(),
        DataType::Fp16 => f16::from_f64(n as f64).to_le_bytes().to_vec(),
        DataType::Bf16 => bf16::from_f64(n as f64).to_le_bytes().to_vec(),
        DataType::Bytes => unreachable!("handled above"),
    };
    Tensor::new(dtype, shape, element.repeat(count)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_fill_every_element_in_the_input_datatype() {
        let one = filled(DataType::Int32, vec![1, 1], &Control::Flag(true)).unwrap();
        assert_eq!(one.data, 1i32.to_le_bytes());
        let id = SequenceId::Number(42);
        let corrid = filled(DataType::Uint64, vec![2], &Control::Id(&id)).unwrap();
        assert_eq!(
            corrid.data,
            [42u64.to_le_bytes(), 42u64.to_le_bytes()].concat()
        );
        let text = SequenceId::Text("call-7".into());
        let named = filled(DataType::Bytes, vec![1], &Control::Id(&text)).unwrap();
        assert_eq!(named.bytes_elements().unwrap(), [b"call-7"]);
        assert!(filled(DataType::Int64, vec![1], &Control::Id(&text)).is_err());
        let big = SequenceId::Number(300);
        assert!(filled(DataType::Uint8, vec![1], &Control::Id(&big)).is_err());
        let flag = filled(DataType::Bool, vec![1], &Control::Flag(false)).unwrap();
        assert_eq!(flag.data, [0]);
    }
}
