//! `gantry-actors`: Gantry's core. A [`Supervisor`](supervisor::Supervisor)
//! owns a [`MemoryBudget`](memory::MemoryBudget) and, per model, a
//! [`Batcher`](batcher::Batcher) and [`Replica`](replica::Replica)s, each
//! replica running one [`Engine`](engine::Engine) on a thread of its own.
//!
//! Nothing here knows about HTTP: handlers validate a request against the
//! model's [`ModelSignature`](signature::ModelSignature), submit an
//! [`InferRequest`](messages::InferRequest) that carries its own reply
//! channel, and await the answer.

pub mod admission;
pub mod arbiter;
pub mod autoscale;
pub mod batcher;
pub mod device;
pub mod engine;
pub mod error;
pub mod inline_run;
pub mod lifecycle;
pub mod memory;
pub mod messages;
pub mod model;
pub mod model_settings;
pub mod model_state;
pub mod observer;
pub mod priority;
pub mod processing;
pub mod queue;
pub mod readiness;
pub mod repack;
pub mod replica;
pub mod repository;
pub mod reshape;
pub mod residency;
pub mod run_profile;
pub mod sequence;
pub mod signature;
pub mod supervisor;
pub mod tensor;
pub mod triton_config;
pub mod usage;
pub mod warmup_sample;

pub use error::{EngineError, InferError};
pub use messages::{InferOutcome, InferRequest};
pub use model::ModelHandle;
pub use priority::Priority;
pub use supervisor::{Serving, Supervisor, SupervisorConfig};
pub use tensor::{DataType, Tensor};
