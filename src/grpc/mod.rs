//! KServe v2 / Triton gRPC beside HTTP: `inference.GRPCInferenceService`
//! (Triton's `grpc_service.proto`, vendored in `proto/triton/`) and the
//! standard `grpc.health.v1` service, on `server.grpc_bind`.
//!
//! The server runs on threads of its own (`grpc-accept` hands connections
//! to `grpc-0`, `grpc-1`, ..., each a single-threaded tokio runtime), so
//! the HTTP workers and the actor system keep theirs; every
//! RPC goes through the same [`crate::service::InferenceService`] as HTTP
//! ([`rpcs`]). Messages are bounded by `server.body_limit_mb` (a bigger
//! one, or one that inflates past it, is RESOURCE_EXHAUSTED, as gRPC's own
//! servers answer; see [`too_large_is_resource_exhausted`]), and gzip is
//! accepted; answers are gzipped only where `server.grpc_compress_answers`
//! says so ([`GrpcOptions`]). The health service
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

use tokio::sync::{mpsc, watch};
use tonic::codec::CompressionEncoding;
use tonic_health::pb::health_server::HealthServer;

use crate::service::InferenceService;

/// The code tonic generates from `proto/triton/` (package `inference`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The largest HTTP/2 frame clients may send (HTTP/2's default, 16 KiB,
/// splits a 196 KiB tensor into 12 frames, each read and handled on its own).
/// What a connection may have sent and not yet read stays bounded by the
/// HTTP/2 flow-control windows (hyper's 1 MiB a stream and a connection),
/// and a header block by hyper's header list limit, as before.
const MAX_FRAME_SIZE: u32 = 1 << 20;

/// How the gRPC server runs: its workers, and what its messages may be.
#[derive(Debug, Clone, Copy)]
pub struct GrpcOptions {
    /// Worker threads (at least one).
    pub threads: usize,
    /// The largest message read, in bytes (`server.body_limit_mb`).
    pub message_limit: usize,
    /// gzip answers to clients whose `grpc-accept-encoding` lists it
    /// (`server.grpc_compress_answers`). gRPC clients list every encoding
    /// they can read on every call, so this is the server's choice, not
    /// the client's; off, as in Triton and gRPC's own servers.
    pub compress_answers: bool,
}

/// A gRPC server that is accepting RPCs.
pub struct GrpcServer {
    pub addr: SocketAddr,
    stop: Option<watch::Sender<bool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl GrpcServer {
    /// Serves gRPC on `listener` as `options` say.
    ///
    /// Each worker is a thread with a single-threaded tokio runtime (as each
    /// actix-web worker is), and one acceptor thread hands the connections
    /// to them in turn: a call's connection, its handler and its answer then
    /// stay on one thread. On one work-stealing runtime the answer, woken
    /// from a replica's thread, was often picked up by another worker than
    /// the connection's: one more thread crossing per call.
    pub fn start(
        service: Arc<InferenceService>,
        listener: TcpListener,
        options: GrpcOptions,
    ) -> std::io::Result<GrpcServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (stop, stopped) = watch::channel(false);
        let mut handoffs = Vec::new();
        let mut handles = Vec::new();
        for index in 0..options.threads.max(1) {
            let (handoff, connections) = mpsc::unbounded_channel();
            handoffs.push(handoff);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (service, stopped) = (service.clone(), stopped.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("grpc-{index}"))
                    .spawn(move || {
                        runtime.block_on(serve(service, connections, options, stopped));
                    })?,
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(
            std::thread::Builder::new()
                .name("grpc-accept".into())
                .spawn(move || runtime.block_on(accept(listener, handoffs, stopped)))?,
        );
        tracing::info!(%addr, "gRPC listening");
        Ok(GrpcServer {
            addr,
            stop: Some(stop),
            threads: handles,
        })
    }

    /// Stops accepting RPCs, waits for those under way, then returns.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Accepts connections until the server stops, handing each to the next
/// worker. A connection moves between runtimes as a std socket (a tokio
/// one belongs to the runtime that made it).
async fn accept(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "gRPC cannot use its listener");
            return;
        }
    };
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let socket = match accepted.and_then(|(socket, _)| socket.into_std()) {
            Ok(socket) => socket,
            Err(e) => {
                // Out of descriptors and the like: the next accept may do.
                tracing::warn!(error = %e, "gRPC could not accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = workers[next % workers.len()].send(socket);
        next += 1;
    }
}

/// One worker: the connections handed to it, served until the server stops
/// (RPCs under way are finished first).
async fn serve(
    service: Arc<InferenceService>,
    connections: mpsc::UnboundedReceiver<std::net::TcpStream>,
    options: GrpcOptions,
    mut stopped: watch::Receiver<bool>,
) {
    let incoming = futures_util::stream::unfold(connections, |mut connections| async move {
        let socket = connections.recv().await?;
        let socket = socket.set_nonblocking(true).and_then(|()| {
            let socket = tokio::net::TcpStream::from_std(socket)?;
            socket.set_nodelay(true)?;
            Ok(socket)
        });
        Some((socket, connections))
    });
    let health = HealthServer::new(health::Readiness {
        service: service.clone(),
    });
    let mut inference = GrpcInferenceServiceServer::new(rpcs::Inference { service })
        .max_decoding_message_size(options.message_limit)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip);
    if options.compress_answers {
        inference = inference.send_compressed(CompressionEncoding::Gzip);
    }
    let served = tonic::transport::Server::builder()
        .max_frame_size(MAX_FRAME_SIZE)
        .layer(tower::util::MapRequestLayer::new(note_arrival))
        .layer(tower::util::MapResponseLayer::new(
            too_large_is_resource_exhausted,
        ))
        .add_service(health)
        .add_service(inference)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "gRPC server failed");
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
