//! The bounded pool decoding and post-processing run on: at most `threads`
//! jobs at once on blocking threads, at most `queue_capacity` more waiting
//! their turn (without holding an async worker); beyond that a job is
//! refused at once (429) rather than holding its upload in memory. A
//! decoder that panics on a hostile file costs that request an error,
//! nothing more. The pool also holds the [`MemoryBudget`] jobs reserve
//! their estimated memory from before they queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::budget::{MemoryBudget, Reservation};
use super::MediaError;

/// Runs CPU-bound media work off the async workers.
#[derive(Debug, Clone)]
pub struct MediaPool {
    permits: Arc<Semaphore>,
    /// Jobs waiting for a thread, and how many may.
    waiting: Arc<AtomicUsize>,
    queue_capacity: usize,
    memory: MemoryBudget,
}

/// Counts a waiting job until dropped.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl MediaPool {
    pub fn new(threads: usize, queue_capacity: usize) -> Self {
        MediaPool {
            permits: Arc::new(Semaphore::new(threads.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue_capacity,
            memory: MemoryBudget::unbounded(),
        }
    }

    /// The same pool with `memory` bounding what its jobs reserve.
    pub fn with_memory(mut self, memory: MemoryBudget) -> Self {
        self.memory = memory;
        self
    }

    /// The memory budget jobs reserve from.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// Reserves `bytes` for a job on `what`: see [`MemoryBudget::reserve`].
    pub fn reserve(&self, bytes: u64, what: &str) -> Result<Reservation, MediaError> {
        self.memory.reserve(bytes, what)
    }

    /// Reserves what a job needing `total` bytes lacks beyond `held`: see
    /// [`MemoryBudget::reserve_beyond`].
    pub fn reserve_beyond(
        &self,
        total: u64,
        held: &Reservation,
        what: &str,
    ) -> Result<Reservation, MediaError> {
        self.memory.reserve_beyond(total, held.bytes(), what)
    }

    /// [`MediaPool::run`], the job holding `reservation` until it ends (a
    /// job outlives a caller that stopped waiting, and so do its bytes).
    pub async fn run_reserved<T, F>(
        &self,
        reservation: &Reservation,
        job: F,
    ) -> Result<T, MediaError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, MediaError> + Send + 'static,
    {
        let held = reservation.clone();
        self.run(move || {
            let _held = held;
            job()
        })
        .await
    }

    /// Runs `job` on a blocking thread once a slot is free. The slot is held
    /// until the job ends, even if the caller stops waiting.
    pub async fn run<T, F>(&self, job: F) -> Result<T, MediaError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, MediaError> + Send + 'static,
    {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue_capacity {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(MediaError::Busy(format!(
                        "{} files are already waiting to be decoded (media.queue_capacity); retry shortly",
                        self.queue_capacity
                    )));
                }
                let _waiting = Waiting(self.waiting.clone());
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| MediaError::Internal("the media pool is closed".into()))?
            }
        };
        let handle = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        });
        match handle.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                tracing::error!("a media job panicked: {e}");
                Err(MediaError::Undecodable(
                    "the file could not be processed: its decoder failed on it".into(),
                ))
            }
            Err(e) => Err(MediaError::Internal(format!(
                "the media job was cancelled: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_threads_jobs_run_at_once_and_panics_are_errors() {
        let pool = MediaPool::new(2, 100);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..6).map(|_| {
            let (running, peak) = (running.clone(), peak.clone());
            pool.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        });
        for result in futures_util::future::join_all(jobs).await {
            result.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(pool.waiting.load(Ordering::SeqCst), 0);
        let err = pool
            .run(|| -> Result<(), MediaError> { panic!("hostile file") })
            .await
            .unwrap_err();
        assert!(matches!(err, MediaError::Undecodable(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once() {
        let pool = MediaPool::new(1, 1);
        let slow = || {
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        };
        let (a, b, c) = tokio::join!(pool.run(slow), pool.run(slow), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pool.run(|| Ok(())).await
        });
        a.unwrap();
        b.unwrap();
        assert!(matches!(c, Err(MediaError::Busy(_))), "{c:?}");
    }
}
