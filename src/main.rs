//! The `gantry` binary: parse flags, load config (exit 2 when it is
//! invalid), load ONNX Runtime, serve until SIGTERM/SIGINT, exit 0.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gantry::config::{Config, LogFormat, Overrides};
use gantry_actors::engine::onnx::{init_runtime, OnnxProvider};

/// Serves the ONNX models of a model repository over HTTP.
#[derive(Parser, Debug)]
#[command(name = "gantry", version, about)]
struct Cli {
    /// Configuration file (defaults apply to every key it omits).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Model repository folder (overrides `models.dir`).
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Address to listen on (overrides `server.bind`), e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Address of the gRPC server (overrides `server.grpc_bind`), e.g.
    /// 127.0.0.1:8001; an empty value turns it off.
    #[arg(long, value_name = "ADDR")]
    grpc_bind: Option<String>,
    /// Log format (overrides `log.format`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

const DEFAULT_CONFIG: &str = "config/gantry.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        models_dir: cli.models,
        bind: cli.bind,
        grpc_bind: cli.grpc_bind,
        log_format: cli.log_format,
    };
    let (file, required) = match cli.config {
        Some(file) => (file, true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let config = match Config::load(&file, required, &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gantry: invalid configuration in {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let telemetry = match gantry::telemetry::Telemetry::start(&config.telemetry) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("gantry: {e}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of main: dropping it writes out the buffered lines.
    let _log_writer = match gantry::logging::init(
        config.log.format,
        &config.log.level,
        telemetry.as_ref().map(|t| t.tracer()),
    ) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("gantry: cannot start the log writer: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(t) = &telemetry {
        tracing::info!(endpoint = %t.endpoint, "exporting traces over OTLP/HTTP");
    }
    // Posts the spans still queued when main returns.
    let _telemetry = TelemetryOnExit(telemetry);
    let library = match gantry::runtime::locate_onnxruntime(&config.runtime.onnxruntime_lib) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("gantry: {e}");
            return ExitCode::from(1);
        }
    };
    // Microsoft's ONNX Runtime builds keep a device id and a telemetry
    // database under ~/.cache when loaded; a server writes nothing of the
    // kind (and may run on a read-only root). Set while the process has one
    // thread, before the library is loaded; an operator's own value wins.
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        std::env::set_var("ORT_DISABLE_TELEMETRY", "1");
    }
    if let Err(e) = init_runtime(&library, config.runtime.threads()) {
        eprintln!("gantry: {e}");
        return ExitCode::from(1);
    }
    tracing::info!(library = %library.display(), config = %file.display(), "starting gantry");
    match actix_rt::System::new().block_on(serve(config)) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gantry: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.server.bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.bind))?;
    let running = gantry::server::start(&config, listener, Arc::new(OnnxProvider)).await?;
    actix_rt::spawn(gantry::server::handle_signals(
        running.server.handle(),
        running.state.clone(),
    ));
    running.run_until_stopped(Duration::from_secs(10)).await?;
    Ok(())
}

/// Shuts the trace exporter down (posting what is queued) when main ends.
struct TelemetryOnExit(Option<gantry::telemetry::Telemetry>);

impl Drop for TelemetryOnExit {
    fn drop(&mut self) {
        if let Some(telemetry) = self.0.take() {
            telemetry.shutdown();
        }
    }
}
