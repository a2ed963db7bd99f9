//! One model's recent history for stats: requests and errors per second
//! over the last minute, and latency percentiles over every success of the
//! last minute, whatever the rate.
//!
//! Latencies go into HdrHistograms (the `hdrhistogram` crate: 1 us to an
//! hour, two significant digits, so a percentile is within 1% of the true
//! value), one per 5-second slot, twelve slots: a summary merges the slots
//! of the last minute, so it covers between 55 and 60 s of traffic, all of
//! it. (A fixed number of samples would cover the last 4 s at 1,000 req/s.)
//! A slot costs about 13 KB and is made on a model's first success in it.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How far back stats look.
pub const SPAN: Duration = Duration::from_secs(60);
/// The time one latency histogram covers.
const SLOT_S: u64 = 5;
const SLOTS: usize = (SPAN.as_secs() / SLOT_S) as usize;
/// Latencies recorded, in microseconds: longer ones count as an hour.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

#[derive(Debug, Clone, Copy, Default)]
struct Second {
    /// Seconds since the window's epoch that this bucket counts.
    at: u64,
    requests: u64,
    errors: u64,
    /// Successes answered within the model's latency target, and past it.
    within_target: u64,
    past_target: u64,
}

/// The latencies of one slot of [`SLOT_S`] seconds.
#[derive(Debug)]
struct Slot {
    /// Slots since the window's epoch that this one holds.
    at: u64,
    latencies: Histogram<u32>,
}

fn histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        .expect("the bounds are valid")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// A model's last minute.
#[derive(Debug)]
pub struct Window {
    epoch: Instant,
    seconds: Vec<Second>,
    slots: Vec<Option<Slot>>,
}

/// What a window says now.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSummary {
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the window (or since start, if shorter).
    pub rate: f64,
    pub latency_ms: Option<Percentiles>,
    /// Successes within the model's latency target, and past it (both 0
    /// for a model without one).
    pub within_target: u64,
    pub past_target: u64,
    /// Seconds the counts cover (the window, or the time since start).
    pub covered_s: f64,
}

impl Window {
    pub fn new(epoch: Instant) -> Window {
        Window {
            epoch,
            seconds: vec![Second::default(); SPAN.as_secs() as usize],
            slots: (0..SLOTS).map(|_| None).collect(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_secs()
    }

    /// Counts a request; `latency_ms` is kept for successes, and a success
    /// of a model with a latency target counts `within` it (`Some(true)`)
    /// or past it (`Some(false)`).
    pub fn record(&mut self, now: Instant, ok: bool, latency_ms: f64, within: Option<bool>) {
        let at = self.second(now);
        let second = &mut self.seconds[(at % SPAN.as_secs()) as usize];
        if second.at != at {
            *second = Second {
                at,
                ..Second::default()
            };
        }
        second.requests += 1;
        if !ok {
            second.errors += 1;
            return;
        }
        match within {
            Some(true) => second.within_target += 1,
            Some(false) => second.past_target += 1,
            None => {}
        }
        let slot_at = at / SLOT_S;
        let slot = self.slots[(slot_at % SLOTS as u64) as usize].get_or_insert_with(|| Slot {
            at: slot_at,
            latencies: histogram(),
        });
        if slot.at != slot_at {
            slot.at = slot_at;
            slot.latencies.reset();
        }
        let us = (latency_ms * 1000.0)
            .round()
            .clamp(LOWEST_US as f64, HIGHEST_US as f64);
        slot.latencies.saturating_record(us as u64);
    }

    pub fn summary(&mut self, now: Instant) -> WindowSummary {
        let at = self.second(now);
        let recent = self
            .seconds
            .iter()
            .filter(|s| s.at + SPAN.as_secs() > at && s.at <= at);
        let (requests, errors, within_target, past_target) =
            recent.fold((0, 0, 0, 0), |(r, e, w, p), s| {
                (
                    r + s.requests,
                    e + s.errors,
                    w + s.within_target,
                    p + s.past_target,
                )
            });
        let covered = now
            .duration_since(self.epoch)
            .min(SPAN)
            .as_secs_f64()
            .max(1.0);
        let slot_at = at / SLOT_S;
        let mut merged: Option<Histogram<u32>> = None;
        for slot in self.slots.iter().flatten() {
            if slot.at + SLOTS as u64 > slot_at && slot.at <= slot_at && !slot.latencies.is_empty()
            {
                merged
                    .get_or_insert_with(histogram)
                    .add(&slot.latencies)
                    .expect("histograms of the same bounds add");
            }
        }
        WindowSummary {
            requests,
            errors,
            rate: requests as f64 / covered,
            latency_ms: merged.as_ref().map(percentiles),
            within_target,
            past_target,
            covered_s: covered,
        }
    }
}

/// The median of the values each percentile's bucket stands for, in ms.
fn percentiles(h: &Histogram<u32>) -> Percentiles {
    let at = |q: f64| h.median_equivalent(h.value_at_quantile(q)) as f64 / 1000.0;
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within the histograms' 1%.
    fn near(got: f64, want: f64) -> bool {
        (got - want).abs() <= want * 0.01
    }

    #[test]
    fn counts_the_last_minute_only() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for i in 1..=100 {
            w.record(t0, true, i as f64, None);
        }
        w.record(t0, false, 0.0, None);
        let s = w.summary(t0 + Duration::from_secs(10));
        assert_eq!((s.requests, s.errors), (101, 1));
        assert!((s.rate - 10.1).abs() < 1e-9, "{}", s.rate);
        let l = s.latency_ms.unwrap();
        assert!(
            near(l.p50, 50.0) && near(l.p95, 95.0) && near(l.p99, 99.0),
            "{l:?}"
        );
        let later = w.summary(t0 + Duration::from_secs(61));
        assert_eq!((later.requests, later.latency_ms), (0, None));
    }

    #[test]
    fn percentiles_cover_the_whole_minute_at_a_high_rate() {
        // 2,000 successes a second for a minute: 10 ms for the first half
        // minute, 1 ms for the second. The p99 is the slow half's; a window
        // of the last samples would see only the fast ones.
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for second in 0..60u64 {
            let at = t0 + Duration::from_secs(second);
            let latency = if second < 30 { 10.0 } else { 1.0 };
            for _ in 0..2_000 {
                w.record(at, true, latency, None);
            }
        }
        let s = w.summary(t0 + Duration::from_millis(59_900));
        assert_eq!(s.requests, 120_000);
        let l = s.latency_ms.unwrap();
        assert!(near(l.p99, 10.0), "{l:?}");
        assert!(near(l.p50, 1.0) || near(l.p50, 10.0), "{l:?}");
        // 20 s later the first 20 s (slots 0 to 3) have left the window:
        // 10 of the 30 slow seconds remain, 1/4 of the 40 s kept.
        let s = w.summary(t0 + Duration::from_secs(80));
        let l = s.latency_ms.unwrap();
        assert!(near(l.p50, 1.0) && near(l.p95, 10.0), "{l:?}");
        // Long latencies are kept (up to an hour), not clipped.
        w.record(t0 + Duration::from_secs(200), true, 45_000.0, None);
        let l = w.summary(t0 + Duration::from_secs(200)).latency_ms.unwrap();
        assert!(near(l.p99, 45_000.0), "{l:?}");
    }

    #[test]
    fn successes_count_within_or_past_the_target() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for within in [true, true, false, false] {
            w.record(t0, true, 10.0, Some(within));
        }
        // A failure is neither.
        w.record(t0, false, 1.0, Some(true));
        let s = w.summary(t0 + Duration::from_secs(2));
        assert_eq!((s.within_target, s.past_target, s.errors), (2, 2, 1));
        assert_eq!(s.covered_s, 2.0);
        // Without a target nothing is counted either way.
        w.record(t0, true, 10.0, None);
        let s = w.summary(t0 + Duration::from_secs(2));
        assert_eq!((s.within_target, s.past_target), (2, 2));
        let later = w.summary(t0 + Duration::from_secs(61));
        assert_eq!((later.within_target, later.past_target), (0, 0));
    }
}
