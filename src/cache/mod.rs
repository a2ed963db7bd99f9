//! The result cache: L1 in process (moka, bounded in bytes, with TTL) and an
//! optional shared L2 in Redis. A lookup tries L1, then L2 (an L2 hit fills
//! L1); only successful results are stored, in both levels, the Redis write
//! off the request path. Concurrent misses of one key run once
//! ([`coalesce`]).

pub mod coalesce;
pub mod key;
pub mod redis;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use serde::Serialize;

pub use self::key::CacheKey;
use self::redis::{RedisCache, RedisCounters};
pub use gantry_actors::tensor::Outputs;

/// Which level answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheLevel {
    L1,
    L2,
    /// Not from a level: from the identical request that was running when
    /// this one missed.
    Coalesced,
}

impl CacheLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheLevel::L1 => "l1",
            CacheLevel::L2 => "l2",
            CacheLevel::Coalesced => "coalesced",
        }
    }
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub l1_capacity_mb: u64,
    pub ttl: Duration,
    /// `None`: no L2.
    pub redis_url: Option<String>,
    pub redis_timeout: Duration,
    /// Certificates for a `rediss://` URL.
    pub redis_tls: crate::tls::redis::RedisTlsFiles,
}

/// Both levels.
pub struct ResultCache {
    l1: Cache<CacheKey, Outputs>,
    l2: Option<Arc<RedisCache>>,
    l1_hits: AtomicU64,
    l1_misses: AtomicU64,
    in_flight: Arc<coalesce::InFlight>,
}

fn weight(outputs: &Outputs) -> u32 {
    let bytes: usize = outputs
        .iter()
        .map(|(name, t)| name.len() + t.data.len() + 8 * t.shape.len() + 64)
        .sum();
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl ResultCache {
    /// Builds the cache; connects to Redis in the background when a URL is
    /// set. Fails only for an unparsable URL or unusable TLS files.
    pub fn new(settings: &CacheSettings) -> Result<ResultCache, String> {
        let l1 = Cache::builder()
            .max_capacity(settings.l1_capacity_mb * 1024 * 1024)
            .weigher(|_key: &CacheKey, outputs: &Outputs| weight(outputs))
            .time_to_live(settings.ttl)
            .build();
        let l2 = match &settings.redis_url {
            Some(url) => Some(RedisCache::start(
                url,
                &settings.redis_tls,
                settings.redis_timeout,
                settings.ttl.as_secs().max(1),
            )?),
            None => None,
        };
        Ok(ResultCache {
            l1,
            l2,
            l1_hits: AtomicU64::new(0),
            l1_misses: AtomicU64::new(0),
            in_flight: Arc::default(),
        })
    }

    /// L1, then L2 (filling L1 on an L2 hit).
    pub async fn get(&self, key: &CacheKey) -> Option<(Outputs, CacheLevel)> {
        if let Some(found) = self.l1.get(key) {
            self.l1_hits.fetch_add(1, Ordering::Relaxed);
            return Some((found, CacheLevel::L1));
        }
        self.l1_misses.fetch_add(1, Ordering::Relaxed);
        let l2 = self.l2.as_ref()?;
        let bytes = l2.get(key).await?;
        let Some(outputs) = wire::decode(&bytes) else {
            tracing::warn!(key = %key.hex(), "undecodable entry in the redis cache; ignored");
            return None;
        };
        let outputs = Arc::new(outputs);
        self.l1.insert(*key, outputs.clone());
        Some((outputs, CacheLevel::L2))
    }

    /// After a miss: whether this request computes `key` or waits for the
    /// identical request that does.
    pub fn join(&self, key: CacheKey) -> coalesce::Turn {
        self.in_flight.join(key)
    }

    /// Stores a successful result in L1 now and in L2 in the background.
    pub fn put(&self, key: CacheKey, outputs: Outputs) {
        if let Some(l2) = &self.l2 {
            let l2 = l2.clone();
            let bytes = wire::encode(&outputs);
            tokio::spawn(async move { l2.set(&key, bytes).await });
        }
        self.l1.insert(key, outputs);
    }

    /// Redis status for health: `None` when no L2 is configured.
    pub fn redis_status(&self) -> Option<&'static str> {
        self.l2.as_ref().map(|l2| l2.status())
    }

    pub fn stats(&self) -> CacheStats {
        self.l1.run_pending_tasks();
        let l1 = L1Stats {
            entries: self.l1.entry_count(),
            bytes: self.l1.weighted_size(),
            hits: self.l1_hits.load(Ordering::Relaxed),
            misses: self.l1_misses.load(Ordering::Relaxed),
        };
        let l2 = self.l2.as_ref().map(|l2| L2Stats {
            status: l2.status(),
            counters: l2.counters(),
        });
        let hits = l1.hits + l2.as_ref().map_or(0, |l| l.counters.hits);
        let lookups = l1.hits + l1.misses;
        CacheStats {
            hit_rate: if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            },
            l1,
            l2,
            coalesced: self.in_flight.coalesced(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct L1Stats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct L2Stats {
    pub status: &'static str,
    #[serde(flatten)]
    pub counters: RedisCounters,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    pub l1: L1Stats,
    /// `null` when no Redis is configured.
    pub l2: Option<L2Stats>,
    /// Lookups answered by either level.
    pub hit_rate: f64,
    /// Requests that missed while an identical request ran, answered with
    /// its outputs instead of running the model again.
    pub coalesced: u64,
}
