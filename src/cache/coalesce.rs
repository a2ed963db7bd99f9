//! Identical concurrent misses run once: the first request to miss the
//! cache for a key leads, runs the inference and publishes its outputs;
//! requests for the same key that miss while it runs follow, and are
//! answered with the leader's outputs instead of running the model again.
//!
//! A leader that fails, or goes away (its client left, its deadline
//! passed), publishes nothing: its followers then run their own inference,
//! so no request inherits another's error or deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{CacheKey, Outputs};

/// The keys being computed now.
#[derive(Default)]
pub struct InFlight {
    running: Mutex<HashMap<CacheKey, watch::Receiver<Option<Outputs>>>>,
    coalesced: AtomicU64,
}

/// A request's part in the computation of its key.
pub enum Turn {
    /// No one computes the key: this request does, and publishes.
    Lead(Leader),
    /// Another request computes it: wait for [`Follower::outputs`].
    Follow(Follower),
}

impl InFlight {
    /// Joins the computation of `key`, leading it when none runs.
    pub fn join(self: &Arc<Self>, key: CacheKey) -> Turn {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(published) = running.get(&key) {
            return Turn::Follow(Follower {
                published: published.clone(),
                in_flight: self.clone(),
            });
        }
        let (publish, published) = watch::channel(None);
        running.insert(key, published.clone());
        Turn::Lead(Leader {
            key,
            publish,
            published,
            in_flight: self.clone(),
        })
    }

    /// Requests answered with another request's outputs, since start.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    /// Keys being computed now.
    #[cfg(test)]
    fn running(&self) -> usize {
        self.running.lock().map_or(0, |r| r.len())
    }
}

/// The request that computes a key; dropping it ends the computation,
/// with or without outputs.
pub struct Leader {
    key: CacheKey,
    publish: watch::Sender<Option<Outputs>>,
    published: watch::Receiver<Option<Outputs>>,
    in_flight: Arc<InFlight>,
}

impl Leader {
    /// Hands `outputs` to every follower.
    pub fn publish(self, outputs: Outputs) {
        self.publish.send_replace(Some(outputs));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut running = self
            .in_flight
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if running
            .get(&self.key)
            .is_some_and(|r| r.same_channel(&self.published))
        {
            running.remove(&self.key);
        }
    }
}

/// A request waiting for another's computation of its key.
pub struct Follower {
    published: watch::Receiver<Option<Outputs>>,
    in_flight: Arc<InFlight>,
}

impl Follower {
    /// The leader's outputs, or `None` when it ended without any (the
    /// follower then runs the inference itself).
    pub async fn outputs(mut self) -> Option<Outputs> {
        let outputs = self
            .published
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|o| o.clone())?;
        self.in_flight.coalesced.fetch_add(1, Ordering::Relaxed);
        Some(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_actors::Tensor;

    fn outputs(v: f32) -> Outputs {
        Arc::new(vec![("y".into(), Tensor::from_f32(vec![1], &[v]).unwrap())])
    }

    #[tokio::test]
    async fn followers_get_the_leaders_outputs_and_the_key_is_freed() {
        let in_flight = Arc::new(InFlight::default());
        let key = CacheKey([7; 32]);
        let Turn::Lead(leader) = in_flight.join(key) else {
            panic!("the first request leads");
        };
        let followers: Vec<_> = (0..3)
            .map(|_| match in_flight.join(key) {
                Turn::Follow(f) => tokio::spawn(f.outputs()),
                Turn::Lead(_) => panic!("a second request for the key follows"),
            })
            .collect();
        leader.publish(outputs(2.5));
        for follower in followers {
            let got = follower.await.unwrap().expect("the leader's outputs");
            assert_eq!(got[0].1.to_f32().unwrap(), vec![2.5]);
        }
        assert_eq!((in_flight.coalesced(), in_flight.running()), (3, 0));
        assert!(matches!(in_flight.join(key), Turn::Lead(_)));
    }

    #[tokio::test]
    async fn a_leader_that_ends_without_outputs_lets_followers_run_their_own() {
        let in_flight = Arc::new(InFlight::default());
        let key = CacheKey([9; 32]);
        let leader = in_flight.join(key);
        let Turn::Follow(follower) = in_flight.join(key) else {
            panic!("the second request follows");
        };
        let waiting = tokio::spawn(follower.outputs());
        drop(leader);
        assert!(waiting.await.unwrap().is_none());
        assert_eq!((in_flight.coalesced(), in_flight.running()), (0, 0));
    }
}
