//! The shared L2 cache in Redis, through a multiplexed `ConnectionManager`
//! that reconnects by itself. Redis is never allowed to slow requests down:
//! every call has a short timeout, and a circuit breaker skips Redis for a
//! while after repeated failures. A Redis that is down at start is connected
//! in the background as soon as it comes up. `rediss://` URLs connect over
//! TLS.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::key::CacheKey;
use crate::tls::redis::RedisTlsFiles;

/// Key prefix of every entry Gantry writes.
pub const PREFIX: &str = "gantry:v1:";
/// Consecutive failures that open the breaker.
const TRIP_AFTER: u32 = 3;
/// How long an open breaker skips Redis before letting one call probe it.
const OPEN_FOR: Duration = Duration::from_secs(1);
/// Pause between connection attempts while Redis is unreachable.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// L2 counters for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct RedisCounters {
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
}

/// Redis as a cache level.
pub struct RedisCache {
    manager: RwLock<Option<ConnectionManager>>,
    timeout: Duration,
    ttl_s: u64,
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open.
    open_until_ms: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

impl RedisCache {
    /// Parses the URL and starts connecting in the background; serving does
    /// not wait for Redis. Must be called inside a long-lived tokio runtime
    /// (the connection's driver task lives there). A `rediss://` URL is
    /// reached over TLS with `tls` applied (see [`crate::tls::redis`]).
    pub fn start(
        url: &str,
        tls: &RedisTlsFiles,
        timeout: Duration,
        ttl_s: u64,
    ) -> Result<Arc<RedisCache>, String> {
        let client = crate::tls::redis::client(url, tls).map_err(|e| e.to_string())?;
        let cache = Arc::new(RedisCache {
            manager: RwLock::new(None),
            timeout,
            ttl_s,
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let connecting = cache.clone();
        tokio::spawn(async move { connecting.connect_until_up(client).await });
        Ok(cache)
    }

    async fn connect_until_up(&self, client: redis::Client) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(self.timeout.max(Duration::from_millis(50))))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(manager) => {
                    tracing::info!("redis cache connected");
                    *self.manager.write().unwrap_or_else(|e| e.into_inner()) = Some(manager);
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis cache unreachable; serving from L1 and retrying");
                    tokio::time::sleep(RECONNECT_EVERY).await;
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A connection to use now, or `None` when Redis is down or the breaker
    /// is open.
    fn connection(&self) -> Option<ConnectionManager> {
        if self.now_ms() < self.open_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        self.manager
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    fn failed(&self, what: &str, error: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= TRIP_AFTER {
            self.open_until_ms.store(
                self.now_ms() + OPEN_FOR.as_millis() as u64,
                Ordering::Relaxed,
            );
            if failures == TRIP_AFTER {
                tracing::warn!(error, what, "redis cache failing; skipping it for a while");
            }
        }
    }

    /// "up" when connected and the breaker is closed, else "down".
    pub fn status(&self) -> &'static str {
        let connected = self
            .manager
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let tripped = self.consecutive_failures.load(Ordering::Relaxed) >= TRIP_AFTER;
        if connected && !tripped {
            "up"
        } else {
            "down"
        }
    }

    pub fn counters(&self) -> RedisCounters {
        RedisCounters {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    fn redis_key(key: &CacheKey) -> String {
        format!("{PREFIX}{}", key.hex())
    }

    /// The stored bytes for `key`; `None` on a miss, an error or a timeout.
    pub async fn get(&self, key: &CacheKey) -> Option<Vec<u8>> {
        let mut conn = self.connection()?;
        let call = conn.get::<_, Option<Vec<u8>>>(Self::redis_key(key));
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(found)) => {
                self.succeeded();
                let counter = if found.is_some() {
                    &self.hits
                } else {
                    &self.misses
                };
                counter.fetch_add(1, Ordering::Relaxed);
                found
            }
            Ok(Err(e)) => {
                self.failed("get", &e.to_string());
                None
            }
            Err(_) => {
                self.failed("get", "timed out");
                None
            }
        }
    }

    /// Stores `value` with the cache's TTL; failures are counted, not raised.
    pub async fn set(&self, key: &CacheKey, value: Vec<u8>) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let call = conn.set_ex::<_, _, ()>(Self::redis_key(key), value, self.ttl_s);
        match tokio::time::timeout(self.timeout * 4, call).await {
            Ok(Ok(())) => self.succeeded(),
            Ok(Err(e)) => self.failed("set", &e.to_string()),
            Err(_) => self.failed("set", "timed out"),
        }
    }
}
