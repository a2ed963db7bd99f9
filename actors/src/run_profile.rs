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

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Runs kept per batch size.
pub const SAMPLES_KEPT: usize = 8;

/// One replica's run times by batch size (items).
#[derive(Debug, Clone, Default)]
pub struct RunProfile {
    runs: BTreeMap<usize, VecDeque<Duration>>,
}

impl RunProfile {
    /// Notes that a batch of `items` ran in `took`.
    pub fn record(&mut self, items: usize, took: Duration) {
        if items == 0 {
            return;
        }
        let runs = self.runs.entry(items).or_default();
        if runs.len() == SAMPLES_KEPT {
            runs.pop_front();
        }
        runs.push_back(took);
    }

    /// True until a first run was recorded.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The median of the runs measured at exactly `items`.
    fn measured(&self, items: usize) -> Option<Duration> {
        let runs = self.runs.get(&items)?;
        let mut sorted: Vec<Duration> = runs.iter().copied().collect();
        sorted.sort_unstable();
        Some(sorted[(sorted.len() - 1) / 2])
    }

    /// How long a batch of `items` is expected to take; `None` before any
    /// run was recorded.
    pub fn estimate(&self, items: usize) -> Option<Duration> {
        let items = items.max(1);
        if let Some(exact) = self.measured(items) {
            return Some(exact);
        }
        let below = self.runs.range(..items).next_back().map(|(&n, _)| n);
        let above = self.runs.range(items..).next().map(|(&n, _)| n);
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

    /// The measured sizes with their median run times, for stats.
    pub fn medians(&self) -> Vec<(usize, Duration)> {
        self.runs
            .keys()
            .filter_map(|&n| Some((n, self.measured(n)?)))
            .collect()
    }
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
}
