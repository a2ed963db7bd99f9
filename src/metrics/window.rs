//! One model's recent history for stats: requests and errors per second over
//! the last minute, and the latencies of recent successes (at most the last
//! 4096 within the last minute).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back stats look.
pub const SPAN: Duration = Duration::from_secs(60);
/// Most latency samples kept.
const MAX_SAMPLES: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Second {
    /// Seconds since the window's epoch that this bucket counts.
    at: u64,
    requests: u64,
    errors: u64,
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
    latencies: VecDeque<(Instant, f64)>,
}

/// What a window says now.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSummary {
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the window (or since start, if shorter).
    pub rate: f64,
    pub latency_ms: Option<Percentiles>,
}

impl Window {
    pub fn new(epoch: Instant) -> Window {
        Window {
            epoch,
            seconds: vec![Second::default(); SPAN.as_secs() as usize],
            latencies: VecDeque::new(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_secs()
    }

    /// Counts a request; `latency_ms` is kept for successes.
    pub fn record(&mut self, now: Instant, ok: bool, latency_ms: f64) {
        let at = self.second(now);
        let slot = &mut self.seconds[(at % SPAN.as_secs()) as usize];
        if slot.at != at {
            *slot = Second {
                at,
                requests: 0,
                errors: 0,
            };
        }
        slot.requests += 1;
        if ok {
            self.latencies.push_back((now, latency_ms));
            if self.latencies.len() > MAX_SAMPLES {
                self.latencies.pop_front();
            }
        } else {
            slot.errors += 1;
        }
    }

    pub fn summary(&mut self, now: Instant) -> WindowSummary {
        let at = self.second(now);
        let recent = self
            .seconds
            .iter()
            .filter(|s| s.at + SPAN.as_secs() > at && s.at <= at);
        let (requests, errors) = recent.fold((0, 0), |(r, e), s| (r + s.requests, e + s.errors));
        let covered = now
            .duration_since(self.epoch)
            .min(SPAN)
            .as_secs_f64()
            .max(1.0);
        while self
            .latencies
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > SPAN)
        {
            self.latencies.pop_front();
        }
        WindowSummary {
            requests,
            errors,
            rate: requests as f64 / covered,
            latency_ms: percentiles(self.latencies.iter().map(|(_, ms)| *ms).collect()),
        }
    }
}

fn percentiles(mut samples: Vec<f64>) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Some(Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_minute_only() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for i in 1..=100 {
            w.record(t0, true, i as f64);
        }
        w.record(t0, false, 0.0);
        let s = w.summary(t0 + Duration::from_secs(10));
        assert_eq!((s.requests, s.errors), (101, 1));
        assert!((s.rate - 10.1).abs() < 1e-9, "{}", s.rate);
        let l = s.latency_ms.unwrap();
        assert_eq!((l.p50, l.p95, l.p99), (51.0, 95.0, 99.0));
        let later = w.summary(t0 + Duration::from_secs(61));
        assert_eq!((later.requests, later.latency_ms), (0, None));
    }

    #[test]
    fn keeps_at_most_the_newest_samples() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for _ in 0..MAX_SAMPLES {
            w.record(t0, true, 1000.0);
        }
        for _ in 0..MAX_SAMPLES {
            w.record(t0, true, 1.0);
        }
        assert_eq!(w.summary(t0).latency_ms.unwrap().p99, 1.0);
    }
}
