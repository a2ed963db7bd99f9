//! The memory media jobs may take: a bound per file (a file whose estimate
//! is over it is refused, 422) and a bound on all jobs in flight together
//! (beyond it a file is refused at once, 429, instead of waiting). A job
//! holds a [`Reservation`] of its estimate from before it queues until its
//! answer is sent; dropping the last clone gives the bytes back, on every
//! path: success, error, panic, or a client that went away.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::MediaError;

const MIB: u64 = 1 << 20;

/// Bytes for media jobs: per file, and in flight.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    max_file: u64,
    max_inflight: u64,
    used: Arc<AtomicU64>,
}

/// Bytes held by one job until the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Reservation(Arc<Held>);

#[derive(Debug)]
struct Held {
    bytes: u64,
    used: Arc<AtomicU64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Reservation {
    /// The bytes this reservation holds.
    pub fn bytes(&self) -> u64 {
        self.0.bytes
    }
}

impl MemoryBudget {
    /// A budget of `max_file` bytes per file and `max_inflight` bytes for
    /// all jobs together.
    pub fn new(max_file: u64, max_inflight: u64) -> Self {
        MemoryBudget {
            max_file,
            max_inflight,
            used: Arc::new(AtomicU64::new(0)),
        }
    }

    /// No bounds (tools and tests that build a pool by hand).
    pub fn unbounded() -> Self {
        MemoryBudget::new(u64::MAX, u64::MAX)
    }

    /// Bytes reserved by jobs now.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Reserves `bytes` for a job on `what` (named in errors): 422 when one
    /// file may never take that much, 429 when the jobs in flight leave too
    /// little now.
    pub fn reserve(&self, bytes: u64, what: &str) -> Result<Reservation, MediaError> {
        self.reserve_beyond(bytes, 0, what)
    }

    /// Reserves what a job needing `total` bytes lacks beyond the `held`
    /// it already has (a model answered more than its signature promised);
    /// the per-file bound applies to the total.
    pub fn reserve_beyond(
        &self,
        total: u64,
        held: u64,
        what: &str,
    ) -> Result<Reservation, MediaError> {
        let bytes = total.saturating_sub(held);
        if total > self.max_file {
            return Err(MediaError::TooLarge(format!(
                "{what} needs an estimated {} MiB of memory to decode, resize and answer, over the limit of {} MiB per file (media.max_file_memory_mb)",
                total.div_ceil(MIB),
                self.max_file / MIB
            )));
        }
        let mut current = self.used.load(Ordering::Acquire);
        loop {
            let after = current.saturating_add(bytes);
            if after > self.max_inflight {
                return Err(MediaError::Busy(format!(
                    "media jobs in flight hold {} MiB of the {} MiB allowed (media.max_inflight_mb) and {what} needs {} MiB; retry shortly",
                    current.div_ceil(MIB),
                    self.max_inflight / MIB,
                    bytes.div_ceil(MIB)
                )));
            }
            match self.used.compare_exchange_weak(
                current,
                after,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Reservation(Arc::new(Held {
                        bytes,
                        used: self.used.clone(),
                    })))
                }
                Err(now) => current = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_come_back_when_the_last_clone_goes() {
        let budget = MemoryBudget::new(10 * MIB, 16 * MIB);
        let a = budget.reserve(10 * MIB, "a.png").unwrap();
        let held = a.clone();
        assert_eq!(budget.in_use(), 10 * MIB);
        let err = budget.reserve(7 * MIB, "b.png").unwrap_err();
        assert!(
            matches!(err, MediaError::Busy(ref m) if m.contains("media.max_inflight_mb") && m.contains("b.png")),
            "{err:?}"
        );
        let b = budget.reserve(6 * MIB, "b.png").unwrap();
        drop(a);
        assert_eq!(budget.in_use(), 16 * MIB);
        drop(held);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        let err = budget.reserve(10 * MIB + 1, "c.png").unwrap_err();
        assert!(
            matches!(err, MediaError::TooLarge(ref m) if m.contains("media.max_file_memory_mb") && m.contains("11 MiB")),
            "{err:?}"
        );
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_panicking_holder_gives_its_bytes_back() {
        let budget = MemoryBudget::new(MIB, MIB);
        let reservation = budget.reserve(MIB, "x").unwrap();
        let joined = std::thread::spawn(move || {
            let _held = reservation;
            panic!("decoder failed");
        })
        .join();
        assert!(joined.is_err());
        assert_eq!(budget.in_use(), 0);
    }
}
