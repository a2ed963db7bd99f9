//! KServe v2 / Triton gRPC beside HTTP: `inference.GRPCInferenceService`
//! (Triton's `grpc_service.proto`, vendored in `proto/triton/`) and the
//! standard `grpc.health.v1` service, on `server.grpc_bind`.
//!
//! The server runs on a tokio runtime of its own (its threads named
//! `grpc`), so the HTTP workers and the actor system keep theirs; every
//! RPC goes through the same [`crate::service::InferenceService`] as HTTP
//! ([`rpcs`]). Messages are bounded by `server.body_limit_mb` (a bigger
//! one, or one that inflates past it, is RESOURCE_EXHAUSTED, as gRPC's own
//! servers answer; see [`too_large_is_resource_exhausted`]), and gzip is
//! accepted and, when the client asks, sent. The health service
//! ([`health`]) answers SERVING for the server (`""`) and the inference
//! service while every model has a ready replica and no shutdown has begun,
//! as `/v2/health/ready` does, read when asked. [`GrpcServer::stop`] stops
//! accepting RPCs and waits for those under way.

mod caller;
mod health;
mod infer;
mod json;
mod parameters;
mod rpcs;
mod status;
mod tensors;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use tokio::sync::oneshot;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;

use crate::service::InferenceService;

/// The code tonic generates from `proto/triton/` (package `inference`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::GrpcInferenceServiceServer;

/// A gRPC server that is accepting RPCs.
pub struct GrpcServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcServer {
    /// Serves gRPC on `listener` with `threads` runtime threads, messages
    /// bounded by `limit` bytes (`server.body_limit_mb`).
    pub fn start(
        service: Arc<InferenceService>,
        listener: TcpListener,
        threads: usize,
        limit: usize,
    ) -> std::io::Result<GrpcServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("grpc")
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("grpc".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            tracing::error!(error = %e, "gRPC cannot use its listener");
                            return;
                        }
                    };
                    let health = HealthServer::new(health::Readiness {
                        service: service.clone(),
                    });
                    let inference = GrpcInferenceServiceServer::new(rpcs::Inference { service })
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(usize::MAX)
                        .accept_compressed(CompressionEncoding::Gzip)
                        .send_compressed(CompressionEncoding::Gzip);
                    let served = tonic::transport::Server::builder()
                        .layer(tower::util::MapRequestLayer::new(note_arrival))
                        .layer(tower::util::MapResponseLayer::new(
                            too_large_is_resource_exhausted,
                        ))
                        .add_service(health)
                        .add_service(inference)
                        .serve_with_incoming_shutdown(
                            TcpIncoming::from(listener).with_nodelay(Some(true)),
                            async {
                                let _ = stopped.await;
                            },
                        )
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "gRPC server failed");
                    }
                });
            })?;
        tracing::info!(%addr, "gRPC listening");
        Ok(GrpcServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops accepting RPCs, waits for those under way, then returns.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// When a call arrived, before its message was read and decoded: the
/// moment tonic starts its own `grpc-timeout` clock, and so the one the
/// service's deadline counts from ([`infer`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived(pub std::time::Instant);

fn note_arrival<B>(mut request: http1::Request<B>) -> http1::Request<B> {
    request
        .extensions_mut()
        .insert(Arrived(std::time::Instant::now()));
    request
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE, and one
/// that inflates past it with RESOURCE_EXHAUSTED; gRPC's own servers (and
/// Triton) answer RESOURCE_EXHAUSTED for both, which is what clients retry
/// on and alert on. A unary call refused before its handler runs is a
/// trailers-only answer, its status in the headers: that one is rewritten.
/// Gantry's handlers never answer OUT_OF_RANGE ([`status::GrpcStatus`]),
/// so nothing else is. A stream's message that is too large ends the
/// stream, and `infer::stream` answers it the same way.
fn too_large_is_resource_exhausted<B>(mut response: http1::Response<B>) -> http1::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if headers.get("grpc-status").and_then(|v| v.to_str().ok()) == Some(out_of_range.as_str()) {
        let exhausted = (tonic::Code::ResourceExhausted as i32).to_string();
        if let Ok(value) = http1::HeaderValue::from_str(&exhausted) {
            headers.insert("grpc-status", value);
        }
    }
    response
}
