//! Gantry's integration tests: one test binary with a module per area, so
//! the crate and the harness (`common`) are compiled and linked once.
//! Each test starts a real server on `127.0.0.1:0` (or the `gantry` binary)
//! and talks to the machine's Redis and PostgreSQL; fault tests start their
//! own and kill them. `make test` runs them all under nextest, each test in
//! a process of its own.

mod common;

mod accounting;
mod autoscale;
mod cache;
mod cli;
mod clients;
mod compression;
mod compute_priority;
mod dashboard;
mod devices;
mod edge;
mod errors;
mod footprints;
mod grpc;
mod inline_runs;
mod latency_target;
mod lifecycle;
mod media;
mod media_limits;
mod numbers;
mod observability;
mod openapi;
mod overload;
mod prediction_log;
mod repository;
mod reservations;
mod residency;
mod scheduling;
mod sequences;
mod serving;
mod stats_schema;
mod store;
mod supervision;
mod tls;
mod topology;
mod traces;
mod triton_examples;
mod triton_layout;
