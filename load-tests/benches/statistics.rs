//! What the statistics extension's counters cost a request: one request's
//! recording (`record_request`) and one batch's (`record_batch`), on one
//! thread and with two threads recording for the same model at once (the
//! contended case: every counter is an atomic shared by all requests).
//!
//! `cargo bench -p gantry-load-tests --bench statistics`; the figures and
//! what they are next to a request's own cost are in load-tests/RESULTS.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gantry::triton::statistics::{ComputeTimes, RequestOutcome, Statistics};

fn phases() -> ComputeTimes {
    ComputeTimes {
        input: Duration::from_micros(3),
        infer: Duration::from_micros(40),
        output: Duration::from_micros(2),
    }
}

fn outcome() -> RequestOutcome {
    RequestOutcome {
        ok: true,
        duration: Duration::from_micros(120),
        items: 1,
        ran: Some((Duration::from_micros(30), phases())),
        cache: Some((false, Duration::from_micros(1))),
    }
}

/// One request and its share of a batch of 8: what a served request
/// records.
fn record_one(stats: &Statistics, size: usize) {
    stats.record_request(black_box("tiny-classifier"), &outcome());
    stats.record_batch(black_box("tiny-classifier"), black_box(size), &phases());
}

fn statistics(c: &mut Criterion) {
    let stats = Arc::new(Statistics::default());
    record_one(&stats, 8);
    c.bench_function("statistics/request+batch, 1 thread", |b| {
        b.iter(|| record_one(&stats, 8))
    });

    // A second thread records for the same model all the while.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (stats, stop) = (stats.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                record_one(&stats, 8);
            }
        })
    };
    c.bench_function("statistics/request+batch, 2 threads contending", |b| {
        b.iter(|| record_one(&stats, 8))
    });
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
}

criterion_group!(benches, statistics);
criterion_main!(benches);
