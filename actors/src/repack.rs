//! Replicas that map their weights give way to packed ones once their model
//! stays busy. A replica loaded on demand maps its weights from a split copy
//! of the model file (see [`crate::engine::mapped_weights`]): it loads in
//! milliseconds while requests wait, but ONNX Runtime cannot prepack mapped
//! weights, and batches of several items then run slower (a 39 MB MLP
//! under 32 callers answers less than half as many requests a second:
//! `make bench-repack`; a batch of one runs about as fast). So the
//! supervisor watches each model's oldest mapped replica: once it has been
//! ready for `memory.repack_after_s` (default [`REPACK_AFTER`]) and the
//! model's batches over that span held
//! [`REPACK_MEAN_BATCH`] items or more on average, a packed replica loads
//! beside it where the budget has room now (never by evicting: room made
//! for a cold model is earmarked for it), and once that one is ready the
//! mapped one is drained (unless the operator asked for more replicas
//! meanwhile: then both stay). With no room, or batches too small, the
//! watch starts over. A packed replica not ready within [`LOAD_LIMIT`] is
//! taken back and the model is not repacked again for [`HOLD_AFTER_GIVING_UP`].
//! A model served one request at a time keeps its mapped replica: packing
//! would cost a load and buy nothing.

use std::time::{Duration, Instant};

use crate::usage::ModelUsage;

/// How long a mapped replica serves before it may be replaced, and the
/// span its model's batch sizes are judged over, by default.
pub const REPACK_AFTER: Duration = Duration::from_secs(10);

/// The mean items per batch from which packed weights pay for their load.
pub const REPACK_MEAN_BATCH: f64 = 2.0;

/// How long the packed replica may take to turn ready before the
/// replacement is given up and the replica taken back.
pub(crate) const LOAD_LIMIT: Duration = Duration::from_secs(120);

/// How long a model whose replacement was given up is not repacked again.
pub(crate) const HOLD_AFTER_GIVING_UP: Duration = Duration::from_secs(300);

/// One model's repacking state.
#[derive(Debug, Default)]
pub(crate) struct Repacking {
    watch: Option<Watch>,
    pending: Option<Pending>,
    /// No repack before this (after one was given up).
    hold_until: Option<Instant>,
}

/// A mapped replica watched since `from`, when the model had run `items`
/// in `batches`.
#[derive(Debug)]
struct Watch {
    mapped: usize,
    from: Instant,
    items: u64,
    batches: u64,
}

/// A packed replica loading to take a mapped one's place.
#[derive(Debug)]
struct Pending {
    packed: usize,
    mapped: usize,
    started: Instant,
}

/// What one look decided.
#[derive(Debug, PartialEq)]
pub(crate) enum RepackStep {
    /// Nothing to replace.
    Nothing,
    /// A replacement is loading: no other change to the model's replicas.
    Loading,
    /// Load a packed replica to replace `mapped`, whose model ran batches
    /// of `mean_batch` items on average.
    Start { mapped: usize, mean_batch: f64 },
    /// `packed` is ready: drain `mapped`.
    Retire { mapped: usize, packed: usize },
    /// `packed` did not turn ready within [`LOAD_LIMIT`]: take it back.
    GiveUp { packed: usize },
}

impl Repacking {
    /// The replacement under way, if any, at `now`: [`RepackStep::Loading`]
    /// until the packed replica is ready, then [`RepackStep::Retire`] (or
    /// [`RepackStep::GiveUp`] past [`LOAD_LIMIT`]); `None` when none is
    /// under way. `ids` are the replicas the model's plan holds.
    pub(crate) fn under_way(
        &mut self,
        usage: &ModelUsage,
        ids: &[usize],
        now: Instant,
    ) -> Option<RepackStep> {
        let pending = self.pending.as_ref()?;
        let (packed, mapped) = (pending.packed, pending.mapped);
        if !ids.contains(&packed) {
            // Evicted or drained meanwhile: nothing left to replace.
            self.pending = None;
            return None;
        }
        if usage.ready_for(packed).is_none() {
            if now.duration_since(pending.started) <= LOAD_LIMIT {
                return Some(RepackStep::Loading);
            }
            self.pending = None;
            self.hold_until = Some(now + HOLD_AFTER_GIVING_UP);
            return Some(RepackStep::GiveUp { packed });
        }
        self.pending = None;
        if !ids.contains(&mapped) {
            // The mapped one left meanwhile: the packed one simply stays.
            return None;
        }
        Some(RepackStep::Retire { mapped, packed })
    }

    /// Whether the oldest mapped replica of a model with `usage` (resident
    /// when `resident`, its plan holding `ids`) is due for a packed
    /// replacement at `now`, judged over spans of `span` (see the module
    /// doc).
    pub(crate) fn due(
        &mut self,
        usage: &ModelUsage,
        resident: bool,
        ids: &[usize],
        now: Instant,
        span: Duration,
    ) -> RepackStep {
        if self.hold_until.is_some_and(|until| now < until) {
            self.watch = None;
            return RepackStep::Nothing;
        }
        let Some((mapped, _)) = usage.longest_mapped().filter(|(id, _)| ids.contains(id)) else {
            self.watch = None;
            return RepackStep::Nothing;
        };
        let (items, batches) = (usage.processed(), usage.batches());
        // A first look, a new mapped replica or a model not resident: the
        // span starts now; a span judged: the next one starts now too.
        let fresh = Watch {
            mapped,
            from: now,
            items,
            batches,
        };
        let Some(watch) = self.watch.replace(fresh) else {
            return RepackStep::Nothing;
        };
        if watch.mapped != mapped || !resident {
            return RepackStep::Nothing;
        }
        if now.duration_since(watch.from) < span {
            // Not judged yet: the span goes on from where it started.
            self.watch = Some(watch);
            return RepackStep::Nothing;
        }
        let ran = batches.saturating_sub(watch.batches);
        let mean_batch = items.saturating_sub(watch.items) as f64 / ran.max(1) as f64;
        if ran == 0 || mean_batch < REPACK_MEAN_BATCH {
            return RepackStep::Nothing;
        }
        RepackStep::Start { mapped, mean_batch }
    }

    /// A packed replica `packed` started loading at `now` to replace
    /// `mapped`.
    pub(crate) fn started(&mut self, packed: usize, mapped: usize, now: Instant) {
        self.pending = Some(Pending {
            packed,
            mapped,
            started: now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: Duration = Duration::from_secs(10);

    /// A usage with replica 0 mapped and ready, replica 1 packed.
    fn mapped_and_packed() -> ModelUsage {
        let usage = ModelUsage::default();
        usage.replica_ready(0, Duration::from_millis(5), true);
        usage.replica_ready(1, Duration::from_millis(90), false);
        usage
    }

    fn run(usage: &ModelUsage, batches: usize, items: u64) {
        for _ in 0..batches {
            usage.ran(items);
        }
    }

    #[test]
    fn a_mapped_replica_whose_model_runs_batches_is_replaced_after_the_span() {
        let usage = mapped_and_packed();
        let mut repacking = Repacking::default();
        let t0 = Instant::now();
        let due = |r: &mut Repacking, at: Duration| r.due(&usage, true, &[0, 1], t0 + at, SPAN);
        assert_eq!(due(&mut repacking, Duration::ZERO), RepackStep::Nothing);
        run(&usage, 10, 4);
        assert_eq!(
            due(&mut repacking, Duration::from_secs(9)),
            RepackStep::Nothing
        );
        assert_eq!(
            due(&mut repacking, SPAN),
            RepackStep::Start {
                mapped: 0,
                mean_batch: 4.0
            }
        );
        // Judged: the next span starts over.
        assert_eq!(
            due(&mut repacking, SPAN + Duration::from_secs(1)),
            RepackStep::Nothing
        );
    }

    #[test]
    fn batches_of_one_or_no_batches_keep_the_mapped_replica() {
        let usage = mapped_and_packed();
        let mut repacking = Repacking::default();
        let t0 = Instant::now();
        repacking.due(&usage, true, &[0, 1], t0, SPAN);
        run(&usage, 30, 1);
        run(&usage, 1, 5);
        // 35 items in 31 batches: 1.1 on average.
        assert_eq!(
            repacking.due(&usage, true, &[0, 1], t0 + SPAN, SPAN),
            RepackStep::Nothing
        );
        assert_eq!(
            repacking.due(&usage, true, &[0, 1], t0 + SPAN * 2, SPAN),
            RepackStep::Nothing,
            "no batches at all"
        );
    }

    #[test]
    fn the_watch_starts_over_when_the_model_leaves_memory_or_the_replica_changes() {
        let usage = mapped_and_packed();
        let mut repacking = Repacking::default();
        let t0 = Instant::now();
        repacking.due(&usage, true, &[0, 1], t0, SPAN);
        run(&usage, 10, 4);
        // Not resident at the judging look: the span starts over.
        assert_eq!(
            repacking.due(&usage, false, &[0, 1], t0 + SPAN, SPAN),
            RepackStep::Nothing
        );
        assert_eq!(
            repacking.due(&usage, true, &[0, 1], t0 + SPAN, SPAN),
            RepackStep::Nothing
        );
        // Replica 0 left; 2 is the mapped one now.
        usage.replica_ready(2, Duration::from_millis(5), true);
        usage.retain_ready(&[1, 2]);
        run(&usage, 10, 4);
        assert_eq!(
            repacking.due(&usage, true, &[1, 2], t0 + SPAN * 2, SPAN),
            RepackStep::Nothing
        );
        run(&usage, 10, 4);
        assert_eq!(
            repacking.due(&usage, true, &[1, 2], t0 + SPAN * 3, SPAN),
            RepackStep::Start {
                mapped: 2,
                mean_batch: 4.0
            }
        );
        // Every ready replica packed: nothing to watch.
        usage.retain_ready(&[1]);
        assert_eq!(
            repacking.due(&usage, true, &[1], t0 + SPAN * 4, SPAN),
            RepackStep::Nothing
        );
    }

    #[test]
    fn a_replacement_retires_the_mapped_replica_once_the_packed_one_is_ready() {
        let usage = mapped_and_packed();
        let mut repacking = Repacking::default();
        let now = Instant::now();
        assert_eq!(repacking.under_way(&usage, &[0, 1], now), None);
        repacking.started(2, 0, now);
        assert_eq!(
            repacking.under_way(&usage, &[0, 1, 2], now),
            Some(RepackStep::Loading)
        );
        usage.replica_ready(2, Duration::from_millis(90), false);
        assert_eq!(
            repacking.under_way(&usage, &[0, 1, 2], now),
            Some(RepackStep::Retire {
                mapped: 0,
                packed: 2
            })
        );
        assert_eq!(repacking.under_way(&usage, &[1, 2], now), None, "done");
        // A packed replica that left before it was ready ends the
        // replacement; a mapped one that left first leaves nothing to retire.
        repacking.started(3, 1, now);
        assert_eq!(repacking.under_way(&usage, &[1, 2], now), None);
        repacking.started(2, 0, now);
        assert_eq!(repacking.under_way(&usage, &[1, 2], now), None);
    }

    #[test]
    fn a_packed_replica_not_ready_in_time_is_taken_back_and_the_model_held() {
        let usage = mapped_and_packed();
        let mut repacking = Repacking::default();
        let t0 = Instant::now();
        repacking.started(2, 0, t0);
        assert_eq!(
            repacking.under_way(&usage, &[0, 1, 2], t0 + LOAD_LIMIT),
            Some(RepackStep::Loading)
        );
        let late = t0 + LOAD_LIMIT + Duration::from_secs(1);
        assert_eq!(
            repacking.under_way(&usage, &[0, 1, 2], late),
            Some(RepackStep::GiveUp { packed: 2 })
        );
        assert_eq!(repacking.under_way(&usage, &[0, 1], late), None);
        // Held: batches that would call for a repack do not, until the hold
        // is over and a whole span has been judged again.
        repacking.due(&usage, true, &[0, 1], late, SPAN);
        run(&usage, 10, 4);
        assert_eq!(
            repacking.due(&usage, true, &[0, 1], late + SPAN, SPAN),
            RepackStep::Nothing
        );
        let after = late + HOLD_AFTER_GIVING_UP;
        assert_eq!(
            repacking.due(&usage, true, &[0, 1], after, SPAN),
            RepackStep::Nothing
        );
        run(&usage, 10, 4);
        assert!(matches!(
            repacking.due(&usage, true, &[0, 1], after + SPAN, SPAN),
            RepackStep::Start { mapped: 0, .. }
        ));
    }
}
