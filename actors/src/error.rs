//! The errors a request can meet inside the actor system. The service maps
//! each variant to one status code, in one place.

/// Why an inference request did not produce a result.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InferError {
    /// No model of that name is served.
    #[error("Request for unknown model: '{0}' is not found")]
    UnknownModel(String),
    /// The model exists but has no ready replica (loading, refused, failed).
    #[error("model '{0}' has no ready replica")]
    ModelNotReady(String),
    /// The model cannot serve: its replicas fail to load, or it can never
    /// fit the memory budget.
    #[error("model '{model}' is not available: {reason}")]
    ModelUnavailable { model: String, reason: String },
    /// The request's deadline passed while its model was being loaded.
    #[error(
        "the request's deadline passed after {waited_ms} ms waiting for model '{model}' to load"
    )]
    LoadTimedOut { model: String, waited_ms: u64 },
    /// Wrong input name, datatype or shape.
    #[error("{0}")]
    InvalidInput(String),
    /// The model's queue is full; the caller should retry later.
    #[error("the queue of model '{model}' is full ({capacity} requests); retry later")]
    QueueFull { model: String, capacity: usize },
    /// The request was predicted, on arrival, to finish past the model's
    /// latency target (or its own deadline): refused at once rather than
    /// queued to answer late.
    #[error(
        "model '{model}' would answer this request in about {predicted_ms} ms, past its \
         {target_ms} ms target; retry in {retry_after_ms} ms"
    )]
    WouldFinishLate {
        model: String,
        predicted_ms: u64,
        target_ms: u64,
        retry_after_ms: u64,
    },
    /// The request's deadline passed before it could run.
    #[error("the request's deadline passed after {waited_ms} ms in the queue")]
    DeadlineExceeded { waited_ms: u64 },
    /// The engine failed to run the batch this request was part of.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The server is stopping and takes no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A request of a sequence that is not open (never started, ended, or
    /// released after being idle), or sequence parameters that do not fit
    /// the model.
    #[error("{0}")]
    Sequence(String),
    /// The model holds as many open sequences as it may.
    #[error("model '{model}' holds {limit} open sequences, its most; end one or retry later")]
    TooManySequences { model: String, limit: usize },
}

/// Errors of an engine (the `Engine` trait of the `engine` module): loading a
/// model or running it.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("could not load model: {0}")]
    Load(String),
    #[error("{0}")]
    Run(String),
    /// The runtime refused these inputs (values out of range, say): the
    /// request's fault, not the engine's, so it never counts toward a reload.
    #[error("{0}")]
    Rejected(String),
    /// The runtime ran out of memory for this batch; a smaller batch may fit.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The device (a GPU) failed: nothing more can run on this engine, so
    /// its replica fails and supervision starts it again.
    #[error("the device failed: {0}")]
    Device(String),
}
