//! [`MemoryTaskCache`]: the `TaskCache` port in the process's memory, for the embedded mode,
//! where there is no Redis. It keeps the port's contract (a hit only under the current
//! generation) with a generation counter and a bounded map of entries that expire.
//!
//! One process owns the store in that mode, so an in-process generation sees every write; with
//! several processes on one database each would need the shared cache (Redis) instead.

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tasklane_domain::{CacheError, CacheLookup, Generation, Replacement, TaskCache};

/// How much the cache may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryCacheSettings {
    /// How long an entry is served after it was stored, at most: each is kept for between nine
    /// tenths of this and all of it, drawn at random (`entry_ttl`).
    pub ttl: Duration,
    /// At most this many entries; storing one more evicts the oldest (an eighth of them).
    pub max_entries: usize,
    /// At most this many bytes of keys and values in all; a single value larger than this is
    /// not stored. A list page can be large (500 tasks of up to 10,000 characters each), so the
    /// number of entries alone does not bound the memory.
    pub max_bytes: usize,
}

impl Default for MemoryCacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            max_entries: 1024,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A cache of list pages and task versions in this process's memory. Every call takes a lock
/// for a few microseconds and never waits on anything else, so the deadlines the port passes
/// are always met and are not consulted.
pub struct MemoryTaskCache {
    settings: MemoryCacheSettings,
    state: Mutex<State>,
}

struct State {
    generation: u64,
    entries: HashMap<String, Entry>,
    /// The size of every key and value in `entries`.
    bytes: usize,
}

struct Entry {
    generation: u64,
    value: Bytes,
    /// When it was stored (a replacement keeps the time of the entry it replaces, as it keeps
    /// its expiry): what eviction goes by, oldest first.
    stored: Instant,
    expires: Instant,
}

/// One entry's TTL: drawn at random between nine tenths of `max` and `max`, as the Redis
/// adapter does, so that entries stored together (the versions of many tasks revalidated at
/// once) are not all read from the store again together when they expire.
fn entry_ttl(max: Duration) -> Duration {
    use rand::Rng;
    max - rand::thread_rng().gen_range(Duration::ZERO..=max / 10)
}

fn footprint(key: &str, value: &Bytes) -> usize {
    key.len() + value.len()
}

impl State {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= footprint(key, &old.value);
        }
    }

    /// Evicts entries until one more of `incoming` bytes fits within both bounds: first the
    /// expired ones, then the oldest (by when they were stored), an eighth of
    /// each bound more than the new entry needs, so that a full cache taking a stream of new
    /// keys (task versions) sorts its entries once per eighth, not on every store.
    fn make_room(&mut self, incoming: usize, settings: &MemoryCacheSettings, now: Instant) {
        let fits = |s: &State| {
            s.entries.len() < settings.max_entries && s.bytes + incoming <= settings.max_bytes
        };
        if fits(self) {
            return;
        }
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
        if fits(self) {
            return;
        }
        let roomy = |s: &State| {
            s.entries.len() + settings.max_entries / 8 < settings.max_entries
                && s.bytes + incoming + settings.max_bytes / 8 <= settings.max_bytes
        };
        let mut by_age: Vec<(Instant, String)> = self
            .entries
            .iter()
            .map(|(k, e)| (e.stored, k.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, key) in by_age {
            if roomy(self) {
                return;
            }
            self.remove(&key);
        }
    }
}

impl std::fmt::Debug for MemoryTaskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryTaskCache")
            .field("settings", &self.settings)
            .field("generation", &state.generation)
            .field("entries", &state.entries.len())
            .field("bytes", &state.bytes)
            .finish()
    }
}

impl MemoryTaskCache {
    pub fn new(settings: MemoryCacheSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State {
                generation: 1,
                entries: HashMap::new(),
                bytes: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock with the state half-changed; should one
        // ever, the worst left behind is a wrong byte count, so carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl TaskCache for MemoryTaskCache {
    async fn lookup(&self, key: &str, _deadline: Instant) -> Result<CacheLookup, CacheError> {
        let now = Instant::now();
        let mut state = self.state();
        let current = state.generation;
        match state.entries.get(key) {
            Some(e) if e.generation == current && e.expires > now => {
                Ok(CacheLookup::Hit(e.value.clone()))
            }
            Some(_) => {
                // Expired or of an older generation: it can never be served again.
                state.remove(key);
                Ok(CacheLookup::Miss(Some(Generation(current))))
            }
            None => Ok(CacheLookup::Miss(Some(Generation(current)))),
        }
    }

    async fn store(
        &self,
        key: &str,
        generation: Generation,
        value: Bytes,
        _deadline: Instant,
    ) -> Result<(), CacheError> {
        let now = Instant::now();
        let size = footprint(key, &value);
        let mut state = self.state();
        // A value computed under an older generation would never be served: keeping it would
        // only take the place of one that may be. The same for one that cannot fit at all.
        if generation.0 != state.generation || size > self.settings.max_bytes {
            return Ok(());
        }
        state.remove(key);
        state.make_room(size, &self.settings, now);
        if state.entries.len() >= self.settings.max_entries {
            // Only when `max_entries` is 0: nothing may be kept.
            return Ok(());
        }
        state.bytes += size;
        state.entries.insert(
            key.to_owned(),
            Entry {
                generation: generation.0,
                value,
                stored: now,
                expires: now + entry_ttl(self.settings.ttl),
            },
        );
        Ok(())
    }

    async fn bump_generation(&self, _deadline: Instant) -> Result<(), CacheError> {
        let mut state = self.state();
        state.generation = state.generation.wrapping_add(1);
        // Every entry belongs to an older generation now: free them at once.
        state.entries.clear();
        state.bytes = 0;
        Ok(())
    }

    async fn bump_generation_replacing(
        &self,
        replacements: &[Replacement],
        _deadline: Instant,
    ) -> Result<Vec<bool>, CacheError> {
        let now = Instant::now();
        let mut state = self.state();
        let before = state.generation;
        let after = before.wrapping_add(1);
        let mut entries = std::mem::take(&mut state.entries);
        state.generation = after;
        state.bytes = 0;
        let mut made = Vec::with_capacity(replacements.len());
        for r in replacements {
            let held = entries.remove(&r.key).filter(|e| {
                r.expected_generation.0 == before
                    && e.generation == before
                    && e.expires > now
                    && e.value == r.expected_value
            });
            let size = footprint(&r.key, &r.value);
            let Some(old) = held.filter(|_| state.bytes + size <= self.settings.max_bytes) else {
                made.push(false);
                continue;
            };
            state.bytes += size;
            state.entries.insert(
                r.key.clone(),
                Entry {
                    generation: after,
                    value: r.value.clone(),
                    stored: old.stored,
                    expires: old.expires,
                },
            );
            made.push(true);
        }
        Ok(made)
    }

    async fn ping(&self, _deadline: Instant) -> Result<(), CacheError> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    fn cache(ttl: Duration, max_entries: usize, max_bytes: usize) -> MemoryTaskCache {
        MemoryTaskCache::new(MemoryCacheSettings {
            ttl,
            max_entries,
            max_bytes,
        })
    }

    async fn generation(c: &MemoryTaskCache) -> Generation {
        match c.lookup("-", deadline()).await {
            Ok(CacheLookup::Miss(Some(g))) => g,
            other => panic!("{other:?}"),
        }
    }

    async fn is_hit(c: &MemoryTaskCache, key: &str) -> bool {
        matches!(c.lookup(key, deadline()).await, Ok(CacheLookup::Hit(_)))
    }

    async fn put(c: &MemoryTaskCache, key: &str, g: Generation, value: &'static [u8]) {
        if let Err(e) = c.store(key, g, Bytes::from_static(value), deadline()).await {
            panic!("{e:?}");
        }
    }

    #[tokio::test]
    async fn a_hit_only_under_the_current_generation() {
        let c = cache(Duration::from_secs(60), 10, 1 << 20);
        let g = generation(&c).await;
        put(&c, "k", g, b"v").await;
        assert_eq!(
            c.lookup("k", deadline()).await.ok(),
            Some(CacheLookup::Hit(Bytes::from_static(b"v")))
        );
        assert!(c.bump_generation(deadline()).await.is_ok());
        let g2 = generation(&c).await;
        assert_ne!(g2, g);
        assert!(!is_hit(&c, "k").await);
        put(&c, "k", g, b"stale").await;
        assert!(!is_hit(&c, "k").await);
        assert_eq!(c.state().entries.len(), 0, "a stale value is not kept");
        put(&c, "k", g2, b"fresh").await;
        assert!(is_hit(&c, "k").await);
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let c = cache(Duration::from_millis(20), 10, 1 << 20);
        let g = generation(&c).await;
        put(&c, "k", g, b"v").await;
        assert!(is_hit(&c, "k").await);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!is_hit(&c, "k").await);
        assert_eq!(c.state().entries.len(), 0, "an expired entry is dropped");
        assert_eq!(c.state().bytes, 0);
    }

    #[tokio::test]
    async fn entries_stored_together_do_not_expire_together() {
        let ttl = Duration::from_secs(60);
        let c = cache(ttl, 100, 1 << 20);
        let g = generation(&c).await;
        let before = Instant::now();
        for id in 0..50 {
            put(&c, &format!("task:{id}:version"), g, b"v").await;
        }
        let after = Instant::now();
        let expiries: Vec<Instant> = c.state().entries.values().map(|e| e.expires).collect();
        assert_eq!(expiries.len(), 50);
        for &expires in &expiries {
            assert!(expires >= before + ttl - ttl / 10 && expires <= after + ttl);
        }
        // 50 draws over 6 s all within one second of each other: a chance of about 50 * (1/6)^49.
        let (first, last) = (expiries.iter().min(), expiries.iter().max());
        let spread = last.zip(first).map(|(last, first)| *last - *first);
        assert!(spread > Some(Duration::from_secs(1)), "{spread:?}");
    }

    #[tokio::test]
    async fn a_replaced_entry_keeps_its_expiry_and_its_bytes_are_counted() {
        let c = cache(Duration::from_millis(300), 10, 1 << 20);
        let g = generation(&c).await;
        put(&c, "k", g, b"v").await;
        put(&c, "other", g, b"o").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = Replacement {
            key: "k".into(),
            expected_generation: g,
            expected_value: Bytes::from_static(b"v"),
            value: Bytes::from_static(b"longer"),
        };
        let made = c.bump_generation_replacing(&[r], deadline()).await.ok();
        assert_eq!(made, Some(vec![true]));
        assert!(is_hit(&c, "k").await);
        assert!(!is_hit(&c, "other").await);
        assert_eq!(
            c.state().bytes,
            footprint("k", &Bytes::from_static(b"longer"))
        );
        // 300 ms after the first store, not after the replacement.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!is_hit(&c, "k").await);
    }

    #[tokio::test]
    async fn the_oldest_entry_makes_room_for_a_new_one() {
        let c = cache(Duration::from_secs(60), 2, 1 << 20);
        let g = generation(&c).await;
        put(&c, "a", g, b"1").await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        put(&c, "b", g, b"2").await;
        // What goes is the oldest stored, not the soonest to expire: each expiry is drawn at
        // random, so make the oldest the last to expire.
        {
            let mut state = c.state();
            let later = state.entries["b"].expires + Duration::from_secs(1);
            if let Some(a) = state.entries.get_mut("a") {
                a.expires = later;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        put(&c, "c", g, b"3").await;
        assert!(!is_hit(&c, "a").await);
        assert!(is_hit(&c, "b").await && is_hit(&c, "c").await);
        // Replacing a key does not evict another.
        put(&c, "c", g, b"33").await;
        assert!(is_hit(&c, "b").await && is_hit(&c, "c").await);
        assert_eq!(c.state().entries.len(), 2);
    }

    #[tokio::test]
    async fn a_full_cache_makes_room_for_an_eighth_more_at_once() {
        let c = cache(Duration::from_secs(60), 16, 1 << 20);
        let g = generation(&c).await;
        for k in 0..16 {
            put(&c, &format!("task:{k}:version"), g, b"12345678").await;
        }
        assert_eq!(c.state().entries.len(), 16);
        put(&c, "list:s=;l=100;c=;q=", g, b"[]").await;
        // The three oldest went (room for the new entry and two more), and the new one is in.
        assert_eq!(c.state().entries.len(), 14);
        assert!(is_hit(&c, "list:s=;l=100;c=;q=").await);
        for k in 0..3 {
            assert!(!is_hit(&c, &format!("task:{k}:version")).await);
        }
        assert!(is_hit(&c, "task:3:version").await);
        // The next two stores have room without evicting.
        put(&c, "task:98:version", g, b"12345678").await;
        put(&c, "task:99:version", g, b"12345678").await;
        assert_eq!(c.state().entries.len(), 16);
    }

    #[tokio::test]
    async fn the_byte_budget_holds() {
        // Keys count too: each entry here takes 1 + 4 bytes.
        let c = cache(Duration::from_secs(60), 100, 12);
        let g = generation(&c).await;
        put(&c, "a", g, b"aaaa").await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        put(&c, "b", g, b"bbbb").await;
        assert_eq!(c.state().bytes, 10);
        put(&c, "c", g, b"cccc").await;
        assert!(!is_hit(&c, "a").await && is_hit(&c, "b").await && is_hit(&c, "c").await);
        assert_eq!(c.state().bytes, 10);
        put(&c, "huge", g, b"0123456789abcdef").await;
        assert!(
            !is_hit(&c, "huge").await,
            "a value over the budget is not stored"
        );
        assert!(
            is_hit(&c, "b").await && is_hit(&c, "c").await,
            "nor evicts others"
        );
        assert!(c.bump_generation(deadline()).await.is_ok());
        assert_eq!(c.state().bytes, 0);
    }

    #[tokio::test]
    async fn zero_capacity_stores_nothing() {
        let c = cache(Duration::from_secs(60), 0, 1 << 20);
        let g = generation(&c).await;
        put(&c, "k", g, b"v").await;
        assert!(!is_hit(&c, "k").await);
    }
}
