//! Builds and starts the server: the actor system first, then the HTTP
//! listener with its limits for slow and idle clients (`[server]` keys),
//! and the gRPC server beside it (`server.grpc_bind`).
//! Tests call [`start`] with a listener on port 0 and any engine provider;
//! `main` calls it with ONNX Runtime.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use gantry_actors::device::{GpuInventory, NvmlInventory};
use gantry_actors::engine::EngineProvider;
use gantry_actors::{Supervisor, SupervisorConfig};

use crate::api::{self, access_log, drain, json_errors, AppState};
use crate::cache::ResultCache;
use crate::config::Config;
use crate::grpc::{GrpcOptions, GrpcServer};
use crate::metrics::prometheus::EventSeries;
use crate::metrics::Metrics;
use crate::request_id;
use crate::service::uploads::MediaSettings;
use crate::service::{InferenceService, ServiceParts};
use crate::store::{PredictionLog, StoreConfig};

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Resolves when the server has stopped (signal or `handle().stop`).
    pub server: Server,
    /// The prediction log, to flush once the server has stopped.
    pub log: Option<Arc<PredictionLog>>,
    /// What every worker shares (for signal handling).
    pub state: web::Data<AppState>,
    /// The gRPC server, unless `server.grpc_bind` is empty.
    pub grpc: Option<GrpcServer>,
}

impl RunningServer {
    /// Waits until the server stops, then writes what the prediction log
    /// still buffers (at most `flush_timeout`).
    pub async fn run_until_stopped(self, flush_timeout: Duration) -> std::io::Result<()> {
        let result = self.server.await;
        // HTTP has stopped after the drain (which counted gRPC calls too):
        // gRPC stops accepting and finishes what is still under way.
        if let Some(grpc) = self.grpc {
            let _ = tokio::task::spawn_blocking(move || grpc.stop()).await;
        }
        // No request is left to copy: close the shared memory objects.
        self.state.service.shared_memory().unregister_all();
        if let Some(log) = self.log {
            log.flush(flush_timeout).await;
        }
        result
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Repository(String),
    #[error("{0}")]
    Cache(String),
    #[error("store.database_url: {0}")]
    Store(String),
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
}

/// Starts the actor system and the HTTP server on `listener`, placing
/// replicas on the GPUs NVML finds. Must run inside an actix `System`.
pub async fn start(
    config: &Config,
    listener: TcpListener,
    provider: Arc<dyn EngineProvider>,
) -> Result<RunningServer, StartError> {
    start_with_gpus(config, listener, provider, Arc::new(NvmlInventory::open())).await
}

/// [`start`] with the GPUs of `gpus` instead of NVML's (tests of placement
/// on machines without a GPU).
pub async fn start_with_gpus(
    config: &Config,
    listener: TcpListener,
    provider: Arc<dyn EngineProvider>,
    gpus: Arc<dyn GpuInventory>,
) -> Result<RunningServer, StartError> {
    gantry_actors::inline_run::set_threshold(Duration::from_micros(config.runtime.inline_run_us));
    if let Err(why) =
        gantry_actors::engine::mapped_weights::init(config.memory.weights_dir().as_deref())
    {
        tracing::warn!(reason = %why, "weights are not mapped: the directory for split copies cannot serve");
    }
    gantry_actors::engine::mapped_weights::describe();
    let metrics = Arc::new(Metrics::new(EventSeries::new(Duration::from_millis(
        config.server.request_timeout_ms,
    ))));
    let serving = Supervisor::start(SupervisorConfig {
        models_dir: config.models.dir.clone(),
        memory: config.memory_budget(),
        gpus,
        provider,
        observer: metrics.clone(),
        residency: config.residency(),
    })
    .await
    .map_err(StartError::Repository)?;
    let cache = match config.cache_settings() {
        Some(settings) => Some(Arc::new(
            ResultCache::new(&settings).map_err(StartError::Cache)?,
        )),
        None => None,
    };
    let log = match config.database_url() {
        Some(database_url) => Some(
            PredictionLog::start(StoreConfig {
                database_url,
                ..config.store.clone()
            })
            .map_err(|e| StartError::Store(e.to_string()))?,
        ),
        None => None,
    };
    let service = Arc::new(InferenceService::new(ServiceParts {
        serving,
        metrics,
        cache,
        log: log.clone(),
        default_timeout: Duration::from_millis(config.server.request_timeout_ms),
        admin_token: Some(config.server.admin_token.clone()).filter(|t| !t.is_empty()),
        media: MediaSettings::from_config(&config.media),
        drain_delay: Duration::from_secs(config.server.drain_delay_s),
        shutdown_timeout: Duration::from_secs(config.server.shutdown_timeout_s),
    }));
    let state = web::Data::new(AppState {
        service: service.clone(),
        body_limit: (config.server.body_limit_mb * 1024 * 1024) as usize,
        body_timeout: Duration::from_millis(config.server.body_timeout_ms),
    });
    let shared = state.clone();
    let addr = listener.local_addr()?;
    let server_config = &config.server;
    // listen() again on a listening socket sets its backlog (Linux, BSDs),
    // whoever bound it.
    socket2::SockRef::from(&listener).listen(server_config.backlog as i32)?;
    set_receive_buffer(&listener, server_config.receive_buffer_kb)?;
    let workers = match server_config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Bound before HTTP starts, so a taken gRPC port fails the start whole.
    let grpc_listener = match server_config.grpc_bind.as_str() {
        "" => None,
        bind => Some(TcpListener::bind(bind).map_err(|e| {
            StartError::Listen(std::io::Error::new(
                e.kind(),
                format!("gRPC on {bind} (server.grpc_bind): {e}"),
            ))
        })?),
    };
    if let Some(grpc) = &grpc_listener {
        set_receive_buffer(grpc, server_config.receive_buffer_kb)?;
    }
    let http = HttpServer::new(move || {
        // The last `wrap` runs first: the request id, then the access log,
        // then draining, then JSON for actix's own error answers.
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(json_errors::shape))
            .wrap(from_fn(drain::guard))
            .wrap(from_fn(access_log::record))
            .wrap(from_fn(request_id::assign))
            .configure(json_errors::config_extractor_errors)
            .configure(api::configure)
            .default_service(web::to(api::not_found))
    })
    .workers(workers)
    // Answers leave as soon as they are written: with Nagle's algorithm
    // (the OS default) a small answer behind a larger one not yet
    // acknowledged on the same connection may wait for the client's
    // delayed ACK (tens of ms). The gRPC listener sets the same.
    .tcp_nodelay(true)
    .shutdown_timeout(server_config.shutdown_timeout_s)
    .client_request_timeout(Duration::from_millis(server_config.header_timeout_ms))
    .client_disconnect_timeout(Duration::from_millis(server_config.disconnect_timeout_ms))
    .keep_alive(match server_config.keep_alive_s {
        0 => KeepAlive::Disabled,
        s => KeepAlive::Timeout(Duration::from_secs(s)),
    })
    // actix counts connections per worker; the key is for all of them.
    .max_connections(server_config.max_connections.div_ceil(workers))
    // A client that closes its connection while its request waits in a
    // queue drops the handler, and with it the request's reply channel: the
    // batcher then skips it (counted as cancelled) instead of running it.
    .h1_allow_half_closed(false)
    .disable_signals();
    let server = http.listen(listener)?.run();
    tracing::info!(%addr, "listening");
    let grpc = match grpc_listener {
        Some(listener) => Some(GrpcServer::start(
            service.clone(),
            listener,
            GrpcOptions {
                threads: workers,
                message_limit: (config.server.body_limit_mb * 1024 * 1024) as usize,
                compress_answers: config.server.grpc_compress_answers,
            },
        )?),
        None => None,
    };

    Ok(RunningServer {
        addr,
        server,
        log,
        state: shared,
        grpc,
    })
}

/// Gives the connections `listener` accepts a receive buffer of `kb` KiB
/// (0: the OS's autotuning, which starts at 128 KiB on Linux). They
/// inherit it, and their window scale is chosen from it. On loopback, where
/// a segment may be 64 KiB, a connection starting at 128 KiB advertises
/// about one segment's window, and a body larger than that crawls in
/// step with the delayed ACKs (a proxy on the same host, or a client
/// beside it, sends over loopback): under `make bench-slo`'s load about 1% of
/// unet-seg's requests (196 KiB bodies) were answered 50-130 ms after
/// they began to arrive, refusals included.
fn set_receive_buffer(listener: &TcpListener, kb: u32) -> std::io::Result<()> {
    if kb > 0 {
        socket2::SockRef::from(listener).set_recv_buffer_size(kb as usize * 1024)?;
    }
    Ok(())
}

/// SIGTERM/SIGINT: readiness turns 503 at once; after
/// `server.drain_delay_s` (predictions still served meanwhile) every new
/// request is answered 503 `shutting_down` with `Connection: close` (also
/// on open keep-alive connections), while requests admitted before finish
/// (within `server.shutdown_timeout_s`); then the server stops. SIGHUP: reload the
/// model repository.
pub async fn handle_signals(server: actix_web::dev::ServerHandle, state: web::Data<AppState>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the model repository");
                match state.service.reload().await {
                    Ok(report) => tracing::info!(changes = ?report.changes, "reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload failed"),
                }
            }
        }
    }
    drain_and_stop(server, state).await;
}

/// Turns readiness 503, serves on for the drain delay, then refuses new
/// requests, waits for the admitted ones (at most
/// `server.shutdown_timeout_s`) and stops the server: gracefully when they
/// have all been answered, at once when the time ran out.
pub async fn drain_and_stop(server: actix_web::dev::ServerHandle, state: web::Data<AppState>) {
    let shutdown = state.service.shutdown();
    shutdown.begin_draining();
    if !shutdown.delay().is_zero() {
        tracing::info!(
            delay_s = shutdown.delay().as_secs_f64(),
            "shutting down: readiness is 503; still serving until load balancers stop routing here"
        );
        tokio::time::sleep(shutdown.delay()).await;
    }
    shutdown.begin_refusing();
    tracing::info!(
        in_flight = shutdown.in_flight(),
        "shutting down: readiness is 503, new requests are refused, finishing in-flight requests"
    );
    let settled = shutdown.settled().await;
    if !settled {
        tracing::warn!(
            in_flight = shutdown.in_flight(),
            "shutdown timeout reached; dropping the requests still running"
        );
    }
    server.stop(settled).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_connections_get_the_configured_receive_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let os_default = socket2::SockRef::from(&listener)
            .recv_buffer_size()
            .unwrap();
        set_receive_buffer(&listener, 0).unwrap();
        let untouched = socket2::SockRef::from(&listener).recv_buffer_size();
        assert_eq!(untouched.unwrap(), os_default);
        // Linux grants twice what is asked (for its bookkeeping), capped
        // at net.core.rmem_max (208 KiB by default) before doubling: at
        // least 256 KiB either way.
        set_receive_buffer(&listener, 256).unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let inherited = socket2::SockRef::from(&accepted)
            .recv_buffer_size()
            .unwrap();
        assert!(inherited >= 256 * 1024, "{inherited}");
        assert!(inherited != os_default, "{inherited}");
        drop(client);
    }
}
