//! A stateful model's `[sequence]` table in `model.toml`: the control
//! inputs the server fills for each request of a sequence, the implicit
//! state it carries between them, and how long an idle sequence lives.

use serde::Deserialize;

/// `[sequence]` in `model.toml`: requests belong to sequences (Triton's
/// `sequence_id`, `sequence_start`, `sequence_end`); the server fills the
/// control inputs named here and carries the implicit state from one
/// request of a sequence to the next.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSettings {
    /// A sequence idle this long is released; its next request without
    /// `sequence_start` is refused.
    #[serde(default = "default_sequence_idle_ms")]
    pub max_sequence_idle_ms: u64,
    /// Most sequences open at once for this model; beyond, 429.
    #[serde(default = "default_max_sequences")]
    pub max_sequences: usize,
    /// Input set to 1 on a sequence's first request, else 0.
    pub start: Option<String>,
    /// Input set to 1 on a sequence's last request, else 0.
    pub end: Option<String>,
    /// Input set to 1 on every request (the slot holds a request).
    pub ready: Option<String>,
    /// Input set to the sequence id (a number, or text for BYTES).
    pub corrid: Option<String>,
    /// Implicit state: each output becomes the next request's input.
    #[serde(default)]
    pub state: Vec<StateSettings>,
}

/// One implicit state pair of a sequence model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    /// The input that receives the state (zeros at a sequence's start).
    pub input: String,
    /// The output whose value is the next request's state.
    pub output: String,
    /// The state's shape at the start, where the input's dimensions are
    /// dynamic (a dynamic dimension is 1 when absent).
    pub dims: Option<Vec<usize>>,
}

fn default_sequence_idle_ms() -> u64 {
    60_000
}

/// Most sequences a model holds open when its settings do not say.
pub(crate) fn default_max_sequences() -> usize {
    1024
}

impl SequenceSettings {
    /// The inputs the server fills in, control and state.
    pub fn server_inputs(&self) -> impl Iterator<Item = &str> {
        [&self.start, &self.end, &self.ready, &self.corrid]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .chain(self.state.iter().map(|s| s.input.as_str()))
    }

    /// Whether the server fills `input` (a control or state input):
    /// clients do not send it, and metadata does not list it.
    pub fn fills_input(&self, input: &str) -> bool {
        self.server_inputs().any(|name| name == input)
    }

    /// Whether `output` is a state output the server keeps for the next
    /// request instead of answering it.
    pub fn keeps_output(&self, output: &str) -> bool {
        self.state.iter().any(|s| s.output == output)
    }
}
