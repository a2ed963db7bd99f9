//! The batcher's pending requests, grouped so that only requests agreeing on
//! every non-batch dimension (and datatype) can share a batch. Groups keep
//! arrival order; the oldest front entry decides which group goes first.

use std::collections::VecDeque;
use std::time::Instant;

use crate::messages::InferRequest;
use crate::tensor::DataType;

/// What must agree for two requests to be stacked: per input, the datatype
/// and every dimension after the first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShapeKey(Vec<(DataType, Vec<usize>)>);

impl ShapeKey {
    pub fn of(request: &InferRequest) -> Self {
        ShapeKey(
            request
                .inputs
                .iter()
                .map(|t| (t.dtype, t.shape.iter().skip(1).copied().collect()))
                .collect(),
        )
    }
}

#[derive(Debug)]
struct Group {
    key: ShapeKey,
    entries: VecDeque<InferRequest>,
    items: usize,
}

/// Requests waiting for a replica, grouped by [`ShapeKey`].
#[derive(Debug, Default)]
pub struct PendingQueue {
    groups: Vec<Group>,
    requests: usize,
}

/// A group that may leave now, or when it may.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Group index of a batch that is full or whose oldest entry waited long enough.
    Due(usize),
    /// Nothing is due; the earliest group falls due at this instant (index, time).
    NotYet(usize, Instant),
    Empty,
}

impl PendingQueue {
    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.requests
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    pub fn push(&mut self, request: InferRequest) {
        let key = ShapeKey::of(&request);
        self.requests += 1;
        let items = request.items;
        match self.groups.iter_mut().find(|g| g.key == key) {
            Some(group) => {
                group.items += items;
                group.entries.push_back(request);
            }
            None => self.groups.push(Group {
                key,
                entries: VecDeque::from([request]),
                items,
            }),
        }
    }

    /// Which group should leave first: the oldest among those that are full
    /// (`cap` items) or whose front waited `window`; else the oldest group
    /// and the instant it falls due.
    pub fn readiness(&self, cap: usize, window: std::time::Duration, now: Instant) -> Readiness {
        let mut oldest: Option<(usize, Instant)> = None;
        let mut due: Option<(usize, Instant)> = None;
        for (index, group) in self.groups.iter().enumerate() {
            let Some(front) = group.entries.front() else {
                continue;
            };
            let since = front.enqueued;
            if oldest.is_none_or(|(_, t)| since < t) {
                oldest = Some((index, since));
            }
            let is_due = group.items >= cap || now.duration_since(since) >= window;
            if is_due && due.is_none_or(|(_, t)| since < t) {
                due = Some((index, since));
            }
        }
        match (due, oldest) {
            (Some((index, _)), _) => Readiness::Due(index),
            (None, Some((index, since))) => Readiness::NotYet(index, since + window),
            (None, None) => Readiness::Empty,
        }
    }

    /// Takes requests from the front of group `index` while they fit in
    /// `cap` items (always at least one). Empty groups are removed.
    pub fn take(&mut self, index: usize, cap: usize) -> Vec<InferRequest> {
        let group = &mut self.groups[index];
        let mut taken = Vec::new();
        let mut items = 0;
        while let Some(front) = group.entries.front() {
            if !taken.is_empty() && items + front.items > cap {
                break;
            }
            let request = group.entries.pop_front().expect("front exists");
            items += request.items;
            group.items -= request.items;
            taken.push(request);
        }
        self.requests -= taken.len();
        if group.entries.is_empty() {
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
            let mut kept = VecDeque::with_capacity(group.entries.len());
            for request in group.entries.drain(..) {
                if dead(&request) {
                    group.items -= request.items;
                    removed.push(request);
                } else {
                    kept.push_back(request);
                }
            }
            group.entries = kept;
        }
        self.groups.retain(|g| !g.entries.is_empty());
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
    use crate::tensor::Tensor;
    use std::time::Duration;
    use tokio::sync::oneshot;

    fn request(width: usize, items: usize, enqueued: Instant) -> InferRequest {
        let (reply, _rx) = oneshot::channel();
        InferRequest {
            request_id: String::new(),
            inputs: vec![Tensor::zeros(DataType::Fp32, vec![items, width])],
            items,
            deadline: enqueued + Duration::from_secs(30),
            enqueued,
            span: tracing::Span::none(),
            reply,
        }
    }

    #[test]
    fn only_same_trailing_shapes_share_a_group() {
        let t0 = Instant::now();
        let mut q = PendingQueue::default();
        q.push(request(4, 1, t0));
        q.push(request(5, 1, t0));
        q.push(request(4, 2, t0));
        assert_eq!(q.len(), 3);
        let batch = q.take(0, 8);
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|r| r.inputs[0].shape[1] == 4));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn take_respects_the_cap_but_always_takes_one() {
        let t0 = Instant::now();
        let mut q = PendingQueue::default();
        q.push(request(4, 3, t0));
        q.push(request(4, 3, t0));
        q.push(request(4, 3, t0));
        assert_eq!(q.take(0, 7).len(), 2);
        assert_eq!(q.take(0, 2).len(), 1);
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
    fn remove_where_keeps_order_of_the_rest() {
        let t0 = Instant::now();
        let mut q = PendingQueue::default();
        for items in 1..=4 {
            q.push(request(4, items, t0));
        }
        let removed = q.remove_where(|r| r.items % 2 == 0);
        assert_eq!(removed.len(), 2);
        let rest: Vec<usize> = q.take(0, 100).iter().map(|r| r.items).collect();
        assert_eq!(rest, [1, 3]);
    }
}
