//! The batcher's pending requests, grouped so that only requests agreeing on
//! every non-batch dimension (and datatype) can share a batch.
//!
//! Within a group, requests wait in one FIFO per [`Priority`](crate::priority::Priority) level: a batch
//! takes higher levels first and arrival order within a level. A request
//! that has waited `max_priority_wait` counts as `high` (it is promoted), so
//! low priority work is never starved. Between groups, the one whose next
//! request has the highest effective priority goes first, then the oldest.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::messages::InferRequest;
use crate::tensor::DataType;

/// `max_priority_wait_ms` when `model.toml` does not set it.
pub const DEFAULT_MAX_PRIORITY_WAIT: Duration = Duration::from_millis(1000);

/// What must agree for two requests to be stacked: per input, the datatype
/// and every dimension after the first; and the replica they are pinned
/// to, if any (a sequence's requests stay on one replica).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShapeKey {
    shapes: Vec<(DataType, Option<Vec<usize>>)>,
    pin: Option<usize>,
}

impl ShapeKey {
    pub fn of(request: &InferRequest) -> Self {
        ShapeKey {
            shapes: request
                .inputs
                .iter()
                .map(|t| {
                    // An absent optional input is its own kind: requests
                    // that left it out run apart from those that gave it.
                    let trailing = if t.is_absent() {
                        None
                    } else {
                        Some(t.shape.iter().skip(1).copied().collect())
                    };
                    (t.dtype, trailing)
                })
                .collect(),
            pin: request.pin,
        }
    }
}

/// How urgent a waiting request is now: its level's rank (0 for `high`, or
/// for a promoted request), then its arrival; smaller goes first.
type Urgency = (usize, Instant);

#[derive(Debug)]
struct Group {
    key: ShapeKey,
    /// One FIFO per priority level, indexed by [`Priority::rank`](crate::priority::Priority::rank).
    levels: [VecDeque<InferRequest>; 3],
    items: usize,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.levels.iter().all(VecDeque::is_empty)
    }

    /// Arrival of the group's oldest request.
    fn oldest(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|level| level.front().map(|r| r.enqueued))
            .min()
    }

    /// The level whose front request goes next, and how urgent it is.
    fn next(&self, now: Instant, max_wait: Duration) -> Option<(usize, Urgency)> {
        self.levels
            .iter()
            .enumerate()
            .filter_map(|(rank, level)| {
                let front = level.front()?;
                let promoted = now.saturating_duration_since(front.enqueued) >= max_wait;
                let effective = if promoted { 0 } else { rank };
                Some((rank, (effective, front.enqueued)))
            })
            .min_by_key(|&(_, urgency)| urgency)
    }
}

/// Requests waiting for a replica, grouped by [`ShapeKey`].
#[derive(Debug)]
pub struct PendingQueue {
    groups: Vec<Group>,
    requests: usize,
    /// A request waiting this long counts as `high`.
    max_wait: Duration,
}

impl Default for PendingQueue {
    fn default() -> Self {
        PendingQueue::new(DEFAULT_MAX_PRIORITY_WAIT)
    }
}

/// A group that may leave now, or when it may.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Group index of a batch that is full or whose oldest entry waited long
    /// enough (the most urgent such group).
    Due(usize),
    /// Nothing is due: the most urgent group (for an idle replica), and the
    /// instant the earliest group falls due.
    NotYet(usize, Instant),
    Empty,
}

/// A batch taken from a group: the requests to run, and those left out
/// because they were dead (cancelled or past their deadline).
#[derive(Debug, Default)]
pub struct Taken {
    pub live: Vec<InferRequest>,
    pub dead: Vec<InferRequest>,
}

impl PendingQueue {
    /// An empty queue promoting requests that waited `max_priority_wait`.
    pub fn new(max_priority_wait: Duration) -> Self {
        PendingQueue {
            groups: Vec::new(),
            requests: 0,
            max_wait: max_priority_wait,
        }
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.requests
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    /// Items waiting at each priority or above, by [`Priority::rank`]: what
    /// a request of that priority would wait behind (low-priority requests
    /// waiting long enough to be promoted are not counted: a guess in the
    /// newcomer's favour).
    ///
    /// [`Priority::rank`]: crate::priority::Priority::rank
    pub fn items_ahead_of_each(&self) -> [usize; 3] {
        let mut at = [0usize; 3];
        for group in &self.groups {
            for (rank, level) in group.levels.iter().enumerate() {
                at[rank] += level.iter().map(|r| r.items).sum::<usize>();
            }
        }
        [at[0], at[0] + at[1], at[0] + at[1] + at[2]]
    }

    /// True when some waiting requests are pinned to a replica.
    pub fn has_pins(&self) -> bool {
        self.groups.iter().any(|g| g.key.pin.is_some())
    }

    pub fn push(&mut self, request: InferRequest) {
        let key = ShapeKey::of(&request);
        self.requests += 1;
        let items = request.items;
        let rank = request.priority.rank();
        match self.groups.iter_mut().find(|g| g.key == key) {
            Some(group) => {
                group.items += items;
                group.levels[rank].push_back(request);
            }
            None => {
                let mut levels: [VecDeque<InferRequest>; 3] = Default::default();
                levels[rank].push_back(request);
                self.groups.push(Group { key, levels, items });
            }
        }
    }

    /// Which group should leave first: among those that are full (`cap`
    /// items) or whose oldest request waited `window`, the one whose next
    /// request is most urgent; else the most urgent group, and the instant
    /// the earliest group falls due.
    pub fn readiness(&self, cap: usize, window: Duration, now: Instant) -> Readiness {
        self.readiness_for(cap, window, now, |_| true)
    }

    /// [`readiness`](Self::readiness) among the groups whose pin `allowed`
    /// accepts (`None`: not pinned).
    pub fn readiness_for(
        &self,
        cap: usize,
        window: Duration,
        now: Instant,
        allowed: impl Fn(Option<usize>) -> bool,
    ) -> Readiness {
        let mut most_urgent: Option<(usize, Urgency)> = None;
        let mut due: Option<(usize, Urgency)> = None;
        let mut earliest: Option<Instant> = None;
        for (index, group) in self.groups.iter().enumerate() {
            if !allowed(group.key.pin) {
                continue;
            }
            let (Some(oldest), Some((_, urgency))) =
                (group.oldest(), group.next(now, self.max_wait))
            else {
                continue;
            };
            if most_urgent.is_none_or(|(_, u)| urgency < u) {
                most_urgent = Some((index, urgency));
            }
            if earliest.is_none_or(|t| oldest < t) {
                earliest = Some(oldest);
            }
            let is_due = group.items >= cap || now.saturating_duration_since(oldest) >= window;
            if is_due && due.is_none_or(|(_, u)| urgency < u) {
                due = Some((index, urgency));
            }
        }
        match (due, most_urgent, earliest) {
            (Some((index, _)), _, _) => Readiness::Due(index),
            (None, Some((index, _)), Some(oldest)) => Readiness::NotYet(index, oldest + window),
            _ => Readiness::Empty,
        }
    }

    /// Takes requests from group `index`, most urgent first, while they fit
    /// in `cap` items (always at least one live request when the group has
    /// one). Requests for which `dead` holds are set aside without taking
    /// room in the batch. Empty groups are removed.
    pub fn take(
        &mut self,
        index: usize,
        cap: usize,
        now: Instant,
        mut dead: impl FnMut(&InferRequest) -> bool,
    ) -> Taken {
        let max_wait = self.max_wait;
        let group = &mut self.groups[index];
        let mut taken = Taken::default();
        let mut items = 0;
        while let Some((rank, _)) = group.next(now, max_wait) {
            let Some(front) = group.levels[rank].front() else {
                break;
            };
            let is_dead = dead(front);
            if !is_dead && !taken.live.is_empty() && items + front.items > cap {
                break;
            }
            let Some(request) = group.levels[rank].pop_front() else {
                break;
            };
            group.items -= request.items;
            if is_dead {
                taken.dead.push(request);
            } else {
                items += request.items;
                taken.live.push(request);
            }
        }
        self.requests -= taken.live.len() + taken.dead.len();
        if group.is_empty() {
            self.groups.swap_remove(index);
        }
        taken
    }

    /// Removes and returns every request for which `dead` holds (cancelled
    /// or past its deadline), keeping the order of the others.
    pub fn remove_where(
        &mut self,
        mut dead: impl FnMut(&InferRequest) -> bool,
    ) -> Vec<InferRequest> {
        let mut removed = Vec::new();
        for group in &mut self.groups {
            let mut removed_items = 0;
            for level in group.levels.iter_mut() {
                let mut kept = VecDeque::with_capacity(level.len());
                for request in level.drain(..) {
                    if dead(&request) {
                        removed_items += request.items;
                        removed.push(request);
                    } else {
                        kept.push_back(request);
                    }
                }
                *level = kept;
            }
            group.items -= removed_items;
        }
        self.groups.retain(|g| !g.is_empty());
        self.requests -= removed.len();
        removed
    }

    /// Removes every request (shutdown).
    pub fn drain_all(&mut self) -> Vec<InferRequest> {
        self.remove_where(|_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::Priority;
    use crate::tensor::Tensor;
    use tokio::sync::oneshot;

    fn request(width: usize, items: usize, enqueued: Instant) -> InferRequest {
        let (reply, _rx) = oneshot::channel();
        InferRequest {
            request_id: String::new(),
            inputs: vec![Tensor::zeros(DataType::Fp32, vec![items, width])],
            items,
            deadline: enqueued + Duration::from_secs(30),
            priority: Priority::Normal,
            pin: None,
            enqueued,
            span: tracing::Span::none(),
            waiting: tracing::Span::none(),
            reply,
        }
    }

    /// A one-item request of width 4 named `id`, at `priority`, arrived at `at`.
    fn named(id: &str, priority: Priority, at: Instant) -> InferRequest {
        let mut r = request(4, 1, at);
        r.request_id = id.into();
        r.priority = priority;
        r
    }

    fn ids(requests: &[InferRequest]) -> Vec<&str> {
        requests.iter().map(|r| r.request_id.as_str()).collect()
    }

    fn take_all(q: &mut PendingQueue, index: usize, cap: usize, now: Instant) -> Vec<InferRequest> {
        q.take(index, cap, now, |_| false).live
    }

    #[test]
    fn only_same_trailing_shapes_share_a_group() {
        let t0 = Instant::now();
        let mut q = PendingQueue::default();
        q.push(request(4, 1, t0));
        q.push(request(5, 1, t0));
        q.push(request(4, 2, t0));
        assert_eq!(q.len(), 3);
        let batch = take_all(&mut q, 0, 8, t0);
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|r| r.inputs[0].shape[1] == 4));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_left_out_optional_input_never_shares_a_group_with_a_given_one() {
        let t0 = Instant::now();
        let mut q = PendingQueue::default();
        // A one-dimensional optional input: given, its trailing shape is
        // empty, as is the placeholder's.
        let with_bias = |given: bool| {
            let mut r = request(4, 1, t0);
            r.inputs.push(if given {
                Tensor::zeros(DataType::Fp32, vec![1])
            } else {
                Tensor::absent(DataType::Fp32)
            });
            r
        };
        q.push(with_bias(true));
        q.push(with_bias(false));
        q.push(with_bias(true));
        let batch = take_all(&mut q, 0, 8, t0);
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|r| !r.inputs[1].is_absent()));
        let rest = take_all(&mut q, 0, 8, t0);
        assert_eq!(rest.len(), 1);
        assert!(rest[0].inputs[1].is_absent());
    }

    #[test]
    fn pinned_requests_group_by_replica_and_wait_for_it() {
        let t0 = Instant::now();
        let window = Duration::from_millis(10);
        let mut q = PendingQueue::default();
        let pinned = |replica| InferRequest {
            pin: Some(replica),
            ..request(4, 1, t0)
        };
        q.push(pinned(1));
        q.push(pinned(1));
        q.push(pinned(2));
        assert!(q.has_pins());
        let late = t0 + window;
        // Replica 1 sees its own group (and nothing pinned elsewhere).
        let mine = q.readiness_for(8, window, late, |pin| pin.is_none_or(|p| p == 1));
        let Readiness::Due(group) = mine else {
            panic!("{mine:?}")
        };
        let batch = take_all(&mut q, group, 8, late);
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|r| r.pin == Some(1)));
        assert_eq!(
            q.readiness_for(8, window, late, |pin| pin.is_none_or(|p| p == 1)),
            Readiness::Empty
        );
        assert!(matches!(q.readiness(8, window, late), Readiness::Due(_)));
    }

    #[test]
    fn take_respects_the_cap_but_always_takes_one() {
        let t0 = Instant::now();
        let mut q = PendingQueue::default();
        q.push(request(4, 3, t0));
        q.push(request(4, 3, t0));
        q.push(request(4, 3, t0));
        assert_eq!(take_all(&mut q, 0, 7, t0).len(), 2);
        assert_eq!(take_all(&mut q, 0, 2, t0).len(), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn readiness_follows_fill_and_window() {
        let t0 = Instant::now();
        let window = Duration::from_millis(100);
        let mut q = PendingQueue::default();
        assert_eq!(q.readiness(4, window, t0), Readiness::Empty);
        q.push(request(4, 1, t0));
        assert_eq!(
            q.readiness(4, window, t0),
            Readiness::NotYet(0, t0 + window)
        );
        assert_eq!(q.readiness(4, window, t0 + window), Readiness::Due(0));
        q.push(request(4, 3, t0));
        assert_eq!(q.readiness(4, window, t0), Readiness::Due(0));
    }

    #[test]
    fn higher_levels_go_first_and_each_level_keeps_arrival_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = PendingQueue::new(ms(1000));
        q.push(named("low-1", Priority::Low, t0));
        q.push(named("normal-1", Priority::Normal, t0 + ms(1)));
        q.push(named("low-2", Priority::Low, t0 + ms(2)));
        q.push(named("high-1", Priority::High, t0 + ms(3)));
        q.push(named("normal-2", Priority::Normal, t0 + ms(4)));
        q.push(named("high-2", Priority::High, t0 + ms(5)));
        let now = t0 + ms(10);
        assert_eq!(
            ids(&take_all(&mut q, 0, 3, now)),
            ["high-1", "high-2", "normal-1"]
        );
        assert_eq!(ids(&take_all(&mut q, 0, 1, now)), ["normal-2"]);
        assert_eq!(ids(&take_all(&mut q, 0, 8, now)), ["low-1", "low-2"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_request_that_waited_max_priority_wait_counts_as_high() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = PendingQueue::new(ms(100));
        q.push(named("low", Priority::Low, t0));
        q.push(named("high-1", Priority::High, t0 + ms(50)));
        q.push(named("high-2", Priority::High, t0 + ms(120)));
        // Before its wait is up the low request yields to high ones...
        assert_eq!(ids(&take_all(&mut q, 0, 1, t0 + ms(99))), ["high-1"]);
        // ...after it, it is as urgent as high and older than high-2.
        assert_eq!(ids(&take_all(&mut q, 0, 1, t0 + ms(130))), ["low"]);
        assert_eq!(ids(&take_all(&mut q, 0, 1, t0 + ms(130))), ["high-2"]);
    }

    #[test]
    fn the_group_with_the_most_urgent_request_goes_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let window = ms(10);
        let mut q = PendingQueue::new(ms(1000));
        let mut wide = request(5, 1, t0);
        wide.priority = Priority::Low;
        q.push(wide); // group 0: an old low request
        q.push(named("normal", Priority::Normal, t0 + ms(1))); // group 1
                                                               // Both are due; group 1's normal request beats group 0's older low one.
        assert_eq!(q.readiness(8, window, t0 + ms(20)), Readiness::Due(1));
        // Neither is due: the idle pick is group 1, the timer follows group 0.
        assert_eq!(
            q.readiness(8, window, t0 + ms(2)),
            Readiness::NotYet(1, t0 + window)
        );
        // Same effective priority: the oldest wins.
        q.push(named("high", Priority::High, t0 + ms(3)));
        let mut old_high = request(5, 1, t0 + ms(2));
        old_high.priority = Priority::High;
        q.push(old_high);
        assert_eq!(q.readiness(8, window, t0 + ms(20)), Readiness::Due(0));
        // A low request that waited max_priority_wait is as urgent as high, and older.
        let late = t0 + ms(1000);
        let first = take_all(&mut q, 0, 8, late);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].priority, Priority::Low);
        assert_eq!(first[1].priority, Priority::High);
    }

    #[test]
    fn dead_requests_are_set_aside_without_taking_room() {
        let t0 = Instant::now();
        let mut q = PendingQueue::default();
        for id in ["a", "dead-1", "b", "dead-2", "c", "d"] {
            q.push(named(id, Priority::Normal, t0));
        }
        let taken = q.take(0, 3, t0, |r| r.request_id.starts_with("dead"));
        assert_eq!(ids(&taken.live), ["a", "b", "c"]);
        assert_eq!(ids(&taken.dead), ["dead-1", "dead-2"]);
        assert_eq!(q.len(), 1);
        let taken = q.take(0, 3, t0, |_| true);
        assert!(taken.live.is_empty());
        assert_eq!(ids(&taken.dead), ["d"]);
        assert!(q.is_empty());
        assert_eq!(q.readiness(3, Duration::ZERO, t0), Readiness::Empty);
    }

    #[test]
    fn remove_where_keeps_order_of_the_rest() {
        let t0 = Instant::now();
        let mut q = PendingQueue::default();
        for items in 1..=4 {
            q.push(request(4, items, t0));
        }
        let removed = q.remove_where(|r| r.items % 2 == 0);
        assert_eq!(removed.len(), 2);
        let rest: Vec<usize> = take_all(&mut q, 0, 100, t0)
            .iter()
            .map(|r| r.items)
            .collect();
        assert_eq!(rest, [1, 3]);
    }
}
