//! How long a replica takes to run a batch, by batch size: measured at
//! warmup for the sizes it tries and from every batch it runs. A model with
//! a latency target sizes its batches and admits requests from it.
//!
//! Each size keeps its last [`SAMPLES_KEPT`] run times and answers their
//! median, so one run slowed by a preemption (or a page fault, or another
//! model's burst on the shared pool) does not move it. A size never run is
//! estimated from its neighbours: between two sizes measured, linearly;
//! above the largest, that run's time per item times the size (batches
//! rarely cost less per item as they grow past what was measured); below
//! the smallest, the smallest's time.
//!
//! A size not run for [`STALE_AFTER_RUNS`] runs of the replica is stale:
//! while fresher sizes exist it counts at the better of its own median and
//! what the fresh sizes say of it. Otherwise a size measured slow once (at
//! a cold warmup, or while the machine was busy) would keep the latency
//! target's cap below it, never run again, and never be corrected; a size
//! measured fast and merely not run lately (low traffic makes small
//! batches) keeps what it showed.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Runs kept per batch size.
pub const SAMPLES_KEPT: usize = 8;
/// Runs of the replica after which a size not run since is stale.
pub const STALE_AFTER_RUNS: u64 = 256;

/// The runs of one batch size.
#[derive(Debug, Clone, Default)]
struct Size {
    samples: VecDeque<Duration>,
    /// The replica's run count at this size's last run.
    last_run: u64,
}

/// One replica's run times by batch size (items).
#[derive(Debug, Clone, Default)]
pub struct RunProfile {
    runs: BTreeMap<usize, Size>,
    /// Runs recorded, all sizes.
    count: u64,
}

impl RunProfile {
    /// Notes that a batch of `items` ran in `took`.
    pub fn record(&mut self, items: usize, took: Duration) {
        if items == 0 {
            return;
        }
        self.count += 1;
        let size = self.runs.entry(items).or_default();
        if size.samples.len() == SAMPLES_KEPT {
            size.samples.pop_front();
        }
        size.samples.push_back(took);
        size.last_run = self.count;
    }

    /// True until a first run was recorded.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    fn is_fresh(&self, size: &Size) -> bool {
        self.count - size.last_run < STALE_AFTER_RUNS
    }

    /// The sizes estimates come from: the fresh ones, or every size when
    /// none is.
    fn usable(&self) -> impl DoubleEndedIterator<Item = (&usize, &Size)> {
        let any_fresh = self.runs.values().any(|s| self.is_fresh(s));
        self.runs
            .iter()
            .filter(move |(_, s)| !any_fresh || self.is_fresh(s))
    }

    /// The median of the runs measured at exactly `items`, if usable.
    fn measured(&self, items: usize) -> Option<Duration> {
        let (_, size) = self.usable().find(|(n, _)| **n == items)?;
        Some(median(size))
    }

    /// How long a batch of `items` is expected to take; `None` before any
    /// run was recorded.
    pub fn estimate(&self, items: usize) -> Option<Duration> {
        let items = items.max(1);
        let from_fresh = self.estimate_from_usable(items);
        let stale = self
            .runs
            .get(&items)
            .filter(|size| !self.is_fresh(size))
            .map(median);
        match (from_fresh, stale) {
            (Some(fresh), Some(stale)) => Some(fresh.min(stale)),
            (fresh, stale) => fresh.or(stale),
        }
    }

    /// The estimate from the usable sizes only.
    fn estimate_from_usable(&self, items: usize) -> Option<Duration> {
        if let Some(exact) = self.measured(items) {
            return Some(exact);
        }
        let below = self.usable().rfind(|(n, _)| **n < items).map(|(&n, _)| n);
        let above = self.usable().find(|(n, _)| **n > items).map(|(&n, _)| n);
        match (below, above) {
            (Some(lo), Some(hi)) => {
                let (t_lo, t_hi) = (self.measured(lo)?, self.measured(hi)?);
                let share = (items - lo) as f64 / (hi - lo) as f64;
                let secs = t_lo.as_secs_f64() + (t_hi.as_secs_f64() - t_lo.as_secs_f64()) * share;
                Some(Duration::from_secs_f64(secs.max(0.0)))
            }
            (Some(lo), None) => {
                let per_item = self.measured(lo)?.as_secs_f64() / lo as f64;
                Some(Duration::from_secs_f64(per_item * items as f64))
            }
            (None, Some(hi)) => self.measured(hi),
            (None, None) => None,
        }
    }

    /// The largest batch, at most `cap`, expected to run within `budget`
    /// (at least 1); `None` before any run was recorded.
    pub fn largest_within(&self, cap: usize, budget: Duration) -> Option<usize> {
        self.estimate(1)?;
        let mut best = 1;
        for items in 2..=cap.max(1) {
            match self.estimate(items) {
                Some(t) if t <= budget => best = items,
                _ => break,
            }
        }
        Some(best)
    }

    /// The batch, at most `cap` and expected within `budget`, that runs
    /// the most items a second (the smallest of equals: on a CPU a
    /// convolutional model often runs as fast per item one at a time, and
    /// a smaller batch waits less). `None` before any run was recorded.
    pub fn fastest_within(&self, cap: usize, budget: Duration) -> Option<usize> {
        let largest = self.largest_within(cap, budget)?;
        let throughputs: Vec<f64> = (1..=largest)
            .map(|n| {
                self.estimate(n)
                    .map_or(0.0, |t| n as f64 / t.as_secs_f64().max(1e-9))
            })
            .collect();
        let best = throughputs.iter().copied().fold(0.0, f64::max);
        let first_best = throughputs.iter().position(|&t| t >= best * (1.0 - 1e-9))?;
        Some(first_best + 1)
    }

    /// The usable sizes with their median run times, for stats.
    pub fn medians(&self) -> Vec<(usize, Duration)> {
        self.usable()
            .filter_map(|(&n, _)| Some((n, self.measured(n)?)))
            .collect()
    }
}

fn median(size: &Size) -> Duration {
    let mut sorted: Vec<Duration> = size.samples.iter().copied().collect();
    sorted.sort_unstable();
    sorted[(sorted.len() - 1) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_slow_run_does_not_move_the_estimate() {
        let mut profile = RunProfile::default();
        assert_eq!(profile.estimate(1), None);
        for _ in 0..4 {
            profile.record(4, ms(10));
        }
        profile.record(4, ms(500)); // preempted
        assert_eq!(profile.estimate(4), Some(ms(10)));
        // Only the last SAMPLES_KEPT count: a lasting change wins.
        for _ in 0..SAMPLES_KEPT {
            profile.record(4, ms(20));
        }
        assert_eq!(profile.estimate(4), Some(ms(20)));
    }

    #[test]
    fn sizes_never_run_come_from_their_neighbours() {
        let mut profile = RunProfile::default();
        profile.record(1, ms(6));
        profile.record(16, ms(36));
        assert_eq!(profile.estimate(1), Some(ms(6)));
        // Between: linear (6 + 30 x 5/15 = 16 ms at 6 items).
        assert_eq!(profile.estimate(6), Some(ms(16)));
        // Above the largest: its time per item (36/16 = 2.25 ms).
        assert_eq!(profile.estimate(32), Some(ms(72)));
        // Below the smallest: the smallest's time.
        let mut only_big = RunProfile::default();
        only_big.record(8, ms(40));
        assert_eq!(only_big.estimate(2), Some(ms(40)));
    }

    #[test]
    fn the_largest_batch_within_a_budget() {
        let mut profile = RunProfile::default();
        assert_eq!(profile.largest_within(16, ms(10)), None);
        // 5 ms + 1 ms per item.
        profile.record(1, ms(6));
        profile.record(16, ms(21));
        assert_eq!(profile.largest_within(16, ms(10)), Some(5));
        assert_eq!(profile.largest_within(16, ms(100)), Some(16));
        assert_eq!(profile.largest_within(4, ms(100)), Some(4));
        // Never below one item, even when one does not fit.
        assert_eq!(profile.largest_within(16, ms(1)), Some(1));
    }

    #[test]
    fn a_size_not_run_for_long_is_estimated_from_those_that_run() {
        let mut profile = RunProfile::default();
        // A cold warmup: 8 items measured at 80 ms, so a 25 ms budget
        // holds 3 items (21.7 ms, between 2's 10 ms and 8's 80) and 8 is
        // never run again.
        profile.record(8, ms(80));
        for _ in 0..4 {
            profile.record(2, ms(10));
        }
        assert_eq!(profile.largest_within(8, ms(25)), Some(3));
        for _ in 0..STALE_AFTER_RUNS {
            profile.record(2, ms(10));
        }
        // Stale: 8 is now 2's time per item times 8 (40 ms); 5 fits.
        assert_eq!(profile.estimate(8), Some(ms(40)));
        assert_eq!(profile.largest_within(8, ms(25)), Some(5));
        assert_eq!(profile.medians(), vec![(2, ms(10))]);
        // A stale size that ran faster than the fresh ones say keeps its
        // own time: small batches lately say nothing against it.
        let mut quiet = RunProfile::default();
        quiet.record(16, ms(20));
        for _ in 0..STALE_AFTER_RUNS {
            quiet.record(2, ms(10));
        }
        assert_eq!(quiet.estimate(16), Some(ms(20)));
        // Running it again makes it count again.
        profile.record(8, ms(24));
        assert_eq!(profile.estimate(8), Some(ms(24)));
        // With every size stale, all of them count.
        let mut alone = RunProfile::default();
        alone.record(4, ms(8));
        assert_eq!(alone.estimate(4), Some(ms(8)));
    }

    #[test]
    fn the_fastest_batch_within_a_budget() {
        // 5 ms + 1 ms per item: throughput keeps rising with the batch.
        let mut rising = RunProfile::default();
        rising.record(1, ms(6));
        rising.record(16, ms(21));
        assert_eq!(rising.fastest_within(16, ms(100)), Some(16));
        assert_eq!(rising.fastest_within(16, ms(15)), Some(10));
        // 3 ms an item whatever the batch (a CPU-bound UNet): one item is
        // as fast as eight, and waits far less.
        let mut flat = RunProfile::default();
        flat.record(1, ms(3));
        flat.record(8, ms(24));
        assert_eq!(flat.fastest_within(8, ms(25)), Some(1));
        // Batches past a size that runs slower per item: that size.
        let mut peaked = RunProfile::default();
        peaked.record(1, ms(4));
        peaked.record(4, ms(8));
        peaked.record(8, ms(24));
        assert_eq!(peaked.fastest_within(8, ms(25)), Some(4));
    }
}
