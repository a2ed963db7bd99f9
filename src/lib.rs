//! Gantry: an actor-based ONNX inference orchestrator. This crate is the
//! application around the actor core (`gantry-actors`): configuration, the
//! HTTP API (REST and KServe v2), the gRPC server (KServe v2 / Triton), tensor codecs, logging and startup.

pub mod access_format;
pub mod access_line;
pub mod api;
pub mod cache;
pub mod codec;
pub mod config;
pub mod error;
pub mod grpc;
pub mod log_writer;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod request_id;
pub mod runtime;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod triton;
