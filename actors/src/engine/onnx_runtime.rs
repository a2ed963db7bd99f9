//! ONNX Runtime itself, once per process: the shared library loaded from
//! the path the application resolves, the one environment with its shared
//! thread pool, the runtime's one-time setup ([`super::runtime_prime`]),
//! and whether it can run sessions on GPUs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::ep::{ExecutionProvider, CUDA};

use super::pool_gate::{threshold_for, POOL_GATE};

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
/// Where the runtime library was loaded from.
static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
/// The shared intra-op pool's size.
static SHARED_THREADS: OnceLock<usize> = OnceLock::new();

/// ONNX Runtime's shared thread pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeThreads {
    /// Intra-op threads every session shares (the calling thread counts
    /// as one); 0 means the cores available to the process.
    pub intra_op: usize,
    /// Whether idle pool threads spin briefly for more work before they
    /// sleep: lower latency between operators, CPU burnt while idle.
    pub spinning: bool,
    /// CPU runs on the shared pool predicted to take at least this long
    /// take it one at a time ([`super::pool_gate`]); zero: never.
    pub exclusive_run: Duration,
    /// The nice value of the threads that run models
    /// ([`super::compute_priority`]); 0: the process's own.
    pub compute_nice: i32,
}

impl Default for RuntimeThreads {
    fn default() -> Self {
        RuntimeThreads {
            intra_op: 0,
            spinning: true,
            exclusive_run: Duration::from_millis(1),
            compute_nice: 10,
        }
    }
}

/// Whether the runtime's one-time setup ran at startup
/// ([`super::runtime_prime`]) rather than being left to the first model.
static PRIMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the runtime's one-time setup ran at startup, so that it counts
/// in the process's base and not in the first model's footprint.
pub fn runtime_primed() -> bool {
    PRIMED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The shared pool's size once the runtime is initialised.
pub fn shared_pool_threads() -> Option<usize> {
    SHARED_THREADS.get().copied()
}

/// The CUDA provider library the GPU build ships next to the runtime.
pub const CUDA_PROVIDER_LIBRARY: &str = "libonnxruntime_providers_cuda.so";

/// Loads the ONNX Runtime shared library at `library` and creates the
/// process's one environment with its shared thread pool. Calling it again
/// is a no-op (the first call's pool stays).
pub fn init_runtime(library: &Path, threads: RuntimeThreads) -> Result<(), String> {
    if ENVIRONMENT.get().is_some() {
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let intra_op = match threads.intra_op {
        0 => cores,
        n => n,
    };
    let builder = ort::init_from(library)
        .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?;
    let pool = GlobalThreadPoolOptions::default()
        .with_intra_threads(intra_op)
        .and_then(|pool| pool.with_inter_threads(1))
        .and_then(|pool| pool.with_spin_control(threads.spinning))
        .map_err(|e| format!("cannot configure ONNX Runtime's thread pool: {e}"))?;
    super::compute_priority::set_compute_nice(threads.compute_nice);
    // The shared pool's threads start with the environment and take the
    // nice value of the thread that starts them: a helper lowered first.
    let env = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                super::compute_priority::lower_this_thread();
                builder
                    .with_name("gantry")
                    // Microsoft's builds turn telemetry on by default; a
                    // server sends nothing about its models anywhere.
                    .with_telemetry(false)
                    .with_global_thread_pool(pool)
                    .build()
                    .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
            })
            .join()
            .map_err(|_| "starting ONNX Runtime panicked".to_string())?
    })?;
    // The runtime's one-time setup goes to the process's base, not to the
    // first model's footprint; a failure costs only that accuracy.
    match super::runtime_prime::prime(&env) {
        Ok(()) => PRIMED.store(true, std::sync::atomic::Ordering::SeqCst),
        Err(why) => {
            tracing::warn!(error = %why, "ONNX Runtime's one-time setup was left to the first model")
        }
    }
    let _ = ENVIRONMENT.set(env);
    let _ = LIBRARY.set(library.to_path_buf());
    let _ = SHARED_THREADS.set(intra_op);
    let exclusive_run = threshold_for(intra_op, cores, threads.exclusive_run);
    POOL_GATE.set_threshold(exclusive_run);
    tracing::info!(
        intra_op_threads = intra_op,
        spinning = threads.spinning,
        exclusive_run_ms = exclusive_run.as_secs_f64() * 1000.0,
        compute_nice = super::compute_priority::compute_nice(),
        "ONNX Runtime thread pool shared by every session"
    );
    Ok(())
}

/// Whether the loaded runtime can run sessions on GPUs: `Err` names what
/// is missing (an uninitialised runtime, a CPU build, or the CUDA provider
/// library). CUDA and cuDNN themselves are found when a session starts.
pub fn cuda_support() -> Result<(), String> {
    let library = LIBRARY
        .get()
        .ok_or_else(|| "ONNX Runtime is not initialised".to_string())?;
    let compiled = CUDA::is_available()
        .map_err(|e| format!("ONNX Runtime cannot list its execution providers: {e}"))?;
    if !compiled {
        return Err(format!(
            "the ONNX Runtime library {} has no CUDA execution provider (a CPU build; `make onnxruntime-gpu` fetches the GPU build)",
            library.display()
        ));
    }
    let provider = library.with_file_name(CUDA_PROVIDER_LIBRARY);
    if !provider.exists() {
        return Err(format!(
            "the CUDA provider library {} is missing",
            provider.display()
        ));
    }
    Ok(())
}

/// The process's environment, once [`init_runtime`] made it.
pub(super) fn environment() -> Option<&'static Environment> {
    ENVIRONMENT.get()
}
