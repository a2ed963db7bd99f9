//! The process's own growth, shown beside the reservations. Where the
//! engines' memory is the process's (ONNX Runtime on the CPU), how much the
//! process's resident memory has grown since the budget started (before
//! any replica loaded) is what the CPU reservations should add up to, give
//! or take the process's other memory (connections, queues, caches): stats
//! and metrics show both, so an operator sees whether the measured
//! footprints hold.

/// Reads the process's resident memory in MB; `None` where it cannot.
pub type ResidentReader = fn() -> Option<u64>;

/// The process's resident set (`VmRSS`), in MB; `None` off Linux.
pub fn resident_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// The process's growth since a base reading.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProcessGrowth {
    read: ResidentReader,
    base_mb: u64,
}

impl ProcessGrowth {
    /// Takes the base now; `None` when the process cannot be read.
    pub(super) fn from_now(read: ResidentReader) -> Option<ProcessGrowth> {
        Some(ProcessGrowth {
            read,
            base_mb: read()?,
        })
    }

    /// MB the process has grown by since the base (0 when it shrank
    /// below it, or cannot be read now).
    pub(super) fn grown_mb(&self) -> u64 {
        (self.read)().map_or(0, |now| now.saturating_sub(self.base_mb))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static NOW: AtomicU64 = AtomicU64::new(100);

    fn read() -> Option<u64> {
        Some(NOW.load(Ordering::SeqCst))
    }

    #[test]
    fn growth_counts_from_the_base_and_never_below_it() {
        NOW.store(100, Ordering::SeqCst);
        let growth = ProcessGrowth::from_now(read).unwrap();
        assert_eq!(growth.grown_mb(), 0);
        NOW.store(130, Ordering::SeqCst);
        assert_eq!(growth.grown_mb(), 30);
        NOW.store(90, Ordering::SeqCst);
        assert_eq!(growth.grown_mb(), 0);
    }

    #[test]
    fn this_process_can_be_read() {
        assert!(resident_mb().is_some_and(|mb| mb > 0));
    }
}
