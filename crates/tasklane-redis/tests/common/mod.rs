//! Helpers shared by the Redis adapter's test files.

#![allow(dead_code)] // Each test file uses a different part.

use bytes::Bytes;
use deadpool_redis::redis;
use std::time::{Duration, Instant};
use tasklane_domain::{CacheError, Generation, Replacement};
use tasklane_redis::{RedisCacheError, RedisSettings, RedisTaskCache};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The budget the app gives a request's cache work by default.
pub const BUDGET: Duration = Duration::from_millis(100);

/// A deadline for calls that should succeed: generous, since the tests check correctness here,
/// not speed, and a busy 2-core machine may take more than the app's budget to connect.
pub fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A deadline as the app sets it, for calls that must give up in time.
pub fn budget_deadline() -> Instant {
    Instant::now() + BUDGET
}

pub fn settings(url: String, key_prefix: String) -> RedisSettings {
    RedisSettings {
        url,
        key_prefix,
        ttl: Duration::from_secs(60),
        pool_size: 4,
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(300),
        local_copy_bytes: tasklane_redis::DEFAULT_LOCAL_COPY_BYTES,
        lease_time: tasklane_redis::DEFAULT_LEASE_TIME,
    }
}

pub fn cache(
    url: String,
    key_prefix: String,
) -> Result<RedisTaskCache, tasklane_redis::SetupError> {
    RedisTaskCache::new(settings(url, key_prefix))
}

/// A plain connection, to look at and tamper with what the cache wrote.
pub async fn raw(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// The adapter's own cause inside a cache error.
pub fn cause(e: &CacheError) -> Option<&RedisCacheError> {
    std::error::Error::source(e)?.downcast_ref()
}

pub fn is_unavailable(r: &Result<impl std::fmt::Debug, CacheError>) -> bool {
    matches!(r, Err(CacheError::Unavailable(_)))
}

/// Stores `held` as entry `k` under `generation`, then bumps replacing it with `next`; answers
/// which replacements were made.
pub async fn store_then_replace(
    cache: &RedisTaskCache,
    generation: Generation,
    held: &'static [u8],
    next: &'static [u8],
) -> Result<Vec<bool>, CacheError> {
    use tasklane_domain::TaskCache;
    cache
        .store("k", generation, Bytes::from_static(held), deadline())
        .await?;
    cache
        .bump_generation_replacing(&[replacement(generation, held, next)], deadline())
        .await
}

/// A replacement of entry `k`: `held` under `expected`, to become `next`.
pub fn replacement(expected: Generation, held: &'static [u8], next: &'static [u8]) -> Replacement {
    Replacement {
        key: "k".to_owned(),
        expected_generation: expected,
        expected_value: Bytes::from_static(held),
        value: Bytes::from_static(next),
    }
}
