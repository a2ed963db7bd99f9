//! The threads that run models (replica threads and ONNX Runtime's thread
//! pools) run at a higher nice value than the threads that serve requests
//! (HTTP and gRPC workers, the actors that batch and admit), so that where
//! they share cores a request is read, admitted or refused, and its answer
//! written, without waiting for a batch's compute to give the core up.
//! Compute still gets every cycle the serving threads leave; what changes
//! is who goes first. Under overload this is what keeps a refusal quick and
//! an admitted answer on time (measured with `load-tests/slo.sh`, figures in
//! docs/configuration.md under `runtime.compute_nice`: at four times
//! capacity on one core, an MLP's successes within target went from a
//! collapse at 0 to 94-99% at 10).
//!
//! `runtime.compute_nice` sets it (0 leaves every thread at the process's
//! own). Linux only: elsewhere nothing changes. Raising a thread's nice
//! value needs no privilege; lowering it again would, so the threads that
//! ONNX Runtime's shared pool starts are created from a helper thread that
//! was lowered first (threads inherit their creator's nice value), and the
//! serving threads are never touched.

use std::sync::atomic::{AtomicI32, Ordering};

static COMPUTE_NICE: AtomicI32 = AtomicI32::new(0);

/// The largest nice value there is.
pub const MAX_NICE: i32 = 19;

/// Sets the nice value compute threads take from now on (clamped to
/// 0..=[`MAX_NICE`]).
pub fn set_compute_nice(nice: i32) {
    COMPUTE_NICE.store(nice.clamp(0, MAX_NICE), Ordering::Relaxed);
}

/// The nice value compute threads take.
pub fn compute_nice() -> i32 {
    COMPUTE_NICE.load(Ordering::Relaxed)
}

/// Lowers the calling thread (only it) to the compute nice value; a no-op
/// at 0. A failure is logged, never fatal: the thread runs as it was.
pub fn lower_this_thread() {
    let nice = compute_nice();
    if nice == 0 {
        return;
    }
    if let Err(e) = set_thread_nice(nice) {
        tracing::warn!(nice, error = %e, "cannot lower a compute thread's priority");
    }
}

/// Sets the calling thread's nice value to `nice`, unless it is already
/// higher (a process started under `nice -n 15` keeps its threads there:
/// lowering one below the serving threads would invert the intent).
#[cfg(target_os = "linux")]
fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // On Linux, PRIO_PROCESS with a thread id sets that thread alone.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // SAFETY: getpriority and setpriority read only their integer
    // arguments; -1 is a valid nice value, and the thread exists.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    if current >= nice {
        return Ok(());
    }
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_thread_nice(_nice: i32) -> std::io::Result<()> {
    Ok(())
}

/// The calling thread's nice value.
#[cfg(all(test, target_os = "linux"))]
fn thread_nice() -> i32 {
    let tid = unsafe { libc::gettid() };
    // SAFETY: as above; -1 is a valid nice value, so errno is not checked
    // (the calling thread always exists).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_and_the_threads_it_starts_run_at_the_compute_nice() {
        let before = thread_nice();
        set_compute_nice(7);
        let (lowered, child) = std::thread::spawn(|| {
            lower_this_thread();
            let child = std::thread::spawn(thread_nice).join().expect("child");
            (thread_nice(), child)
        })
        .join()
        .expect("thread");
        set_compute_nice(0);
        assert_eq!((lowered, child), (before.max(7), before.max(7)));
        // The calling thread is untouched.
        assert_eq!(thread_nice(), before);
        // Out of range is clamped.
        set_compute_nice(40);
        assert_eq!(compute_nice(), MAX_NICE);
        set_compute_nice(-5);
        assert_eq!(compute_nice(), 0);
    }
}
