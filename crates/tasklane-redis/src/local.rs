//! Local copies of the entries this process has read from or written to Redis.
//!
//! A copy is tagged with the generation its entry was computed under, exactly like the entry
//! in Redis, and is served only after a `GET` of the shared generation key shows that tag is
//! still current: one small reply instead of the whole page. So a copy can never be served after
//! a write acknowledged by any replica (its bump moved the shared generation first), and the
//! guarantee is the one the entries in Redis give. A copy also expires no later than its entry
//! in Redis would, so a replica's owed bump (see the domain's cache debt) is bounded by the same
//! TTL as before.
//!
//! Bounded in bytes, each copy counted with what it costs the allocator beyond its key and
//! payload ([`COPY_OVERHEAD`]), so that many small copies (task versions) are bounded as honestly
//! as a few large ones (list pages). When full, the least recently used copies go, an eighth of
//! the budget at a time (one scan frees room for many copies, so a stream of new keys does not
//! pay a scan each); a payload larger than an eighth of the budget is never copied. No copy is
//! kept of an entry stored under a generation other than the last one this process saw in Redis
//! (after a bump, or in a lookup's reply): it is stale already, and its next reader would pay a
//! round trip to find that out.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use tasklane_domain::Generation;

/// The bounded set of copies. All methods take a short lock and never wait on I/O.
#[derive(Debug)]
pub(crate) struct LocalCopies {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    copies: HashMap<String, Copy>,
    bytes: usize,
    clock: u64,
    /// The generation this process last saw in Redis (a lookup's or a bump's reply).
    latest: Option<Generation>,
}

#[derive(Debug)]
struct Copy {
    generation: Generation,
    payload: Bytes,
    expires: Instant,
    used: u64,
}

/// What one copy costs beyond its key's and payload's bytes: its slot in the map (key and
/// `Copy`, about 90 bytes, at the map's load factor) and the two heap blocks' headers and
/// rounding.
pub(crate) const COPY_OVERHEAD: usize = 160;

fn size(key: &str, payload: &Bytes) -> usize {
    key.len() + payload.len() + COPY_OVERHEAD
}

impl Copy {
    fn size(&self, key: &str) -> usize {
        size(key, &self.payload)
    }
}

impl LocalCopies {
    /// At most `max_bytes` of keys and payloads; 0 keeps no copies at all.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing here can panic while holding the lock, but a poisoned map is still a valid one.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The copy for `key` and the generation it was computed under, unless it has expired.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<(Generation, Bytes)> {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        match inner.copies.get_mut(key) {
            Some(copy) if copy.expires > now => {
                copy.used = clock;
                Some((copy.generation, copy.payload.clone()))
            }
            Some(_) => {
                inner.remove(key);
                None
            }
            None => None,
        }
    }

    /// Notes the generation a reply from Redis carried.
    pub(crate) fn saw(&self, generation: Generation) {
        if self.enabled() {
            self.lock().latest = Some(generation);
        }
    }

    /// Keeps a copy of `payload`, computed under `generation`, until `expires`; unless this
    /// process has since seen another generation in Redis: then the copy could only cost its
    /// next reader a round trip to find it stale.
    pub(crate) fn put(&self, key: &str, generation: Generation, payload: Bytes, expires: Instant) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        if inner.latest.is_some_and(|latest| generation < latest) {
            // Older than what this process has seen: whatever copy there is, is no older.
            return;
        }
        inner.remove(key);
        if inner.latest.is_some_and(|latest| latest != generation) {
            return;
        }
        let size = size(key, &payload);
        if size > self.max_bytes / 8 {
            return;
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.bytes += size;
        inner.copies.insert(
            key.to_owned(),
            Copy {
                generation,
                payload,
                expires,
                used,
            },
        );
        if inner.bytes > self.max_bytes {
            inner.evict_down_to(self.max_bytes - self.max_bytes / 8);
        }
    }

    /// Forgets the copy for `key`.
    pub(crate) fn remove(&self, key: &str) {
        if self.enabled() {
            self.lock().remove(key);
        }
    }

    /// Forgets every copy (after this process moved the generation on, to `latest` if known:
    /// none can be served). Unless `latest` is older than a generation this process has already
    /// seen: then this is the late answer of an earlier bump (two threads' answers may be handled
    /// in either order), and the copies are newer than it. (A generation reset to a lower value
    /// keeps copies that will never match: harmless, as every copy is checked before use.)
    pub(crate) fn clear(&self, latest: Option<Generation>) {
        if self.enabled() {
            let mut inner = self.lock();
            if let (Some(new), Some(seen)) = (latest, inner.latest) {
                if new < seen {
                    return;
                }
            }
            inner.copies.clear();
            inner.bytes = 0;
            inner.latest = latest;
        }
    }

    /// How many copies there are and how many bytes they take.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.copies.len(), inner.bytes)
    }
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.copies.remove(key) {
            self.bytes -= old.size(key);
        }
    }

    /// Drops the least recently used copies until at most `target` bytes are left.
    fn evict_down_to(&mut self, target: usize) {
        let mut by_use: Vec<(u64, usize)> = self
            .copies
            .iter()
            .map(|(key, copy)| (copy.used, copy.size(key)))
            .collect();
        by_use.sort_unstable();
        // The last use of the newest copy to drop: every copy used no later goes.
        let mut excess = self.bytes.saturating_sub(target);
        let mut last_dropped = None;
        for (used, size) in by_use {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(size);
            last_dropped = Some(used);
        }
        if let Some(cutoff) = last_dropped {
            let mut freed = 0;
            self.copies.retain(|key, copy| {
                let keep = copy.used > cutoff;
                if !keep {
                    freed += copy.size(key);
                }
                keep
            });
            self.bytes -= freed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn payload(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn a_copy_comes_back_with_its_generation() {
        let local = LocalCopies::new(1 << 20);
        local.put("k", Generation(7), Bytes::from_static(b"[1]"), later());
        assert_eq!(
            local.get("k", Instant::now()),
            Some((Generation(7), Bytes::from_static(b"[1]")))
        );
        assert_eq!(local.get("other", Instant::now()), None);
    }

    #[test]
    fn a_copy_is_not_served_after_it_expires_and_is_dropped() {
        let local = LocalCopies::new(1 << 20);
        let now = Instant::now();
        local.put(
            "k",
            Generation(1),
            payload(10),
            now + Duration::from_millis(5),
        );
        assert!(local.get("k", now).is_some());
        assert_eq!(local.get("k", now + Duration::from_millis(5)), None);
        assert_eq!(local.usage(), (0, 0));
    }

    #[test]
    fn replacing_removing_and_clearing_keep_the_byte_count_right() {
        let local = LocalCopies::new(1 << 20);
        local.put("a", Generation(1), payload(100), later());
        local.put("a", Generation(2), payload(50), later());
        local.put("bb", Generation(2), payload(10), later());
        assert_eq!(local.usage(), (2, 1 + 50 + 2 + 10 + 2 * COPY_OVERHEAD));
        assert_eq!(
            local.get("a", Instant::now()).map(|c| c.0),
            Some(Generation(2))
        );
        local.remove("a");
        assert_eq!(local.usage(), (1, 12 + COPY_OVERHEAD));
        local.clear(None);
        assert_eq!(local.usage(), (0, 0));
    }

    /// Each of these copies (a 1-byte key and a 99-byte payload) takes one slot.
    const SLOT: usize = 100 + COPY_OVERHEAD;

    #[test]
    fn the_least_recently_used_copies_go_first_when_the_budget_is_full() {
        let local = LocalCopies::new(8 * SLOT);
        for k in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            local.put(k, Generation(1), payload(99), later());
        }
        assert_eq!(local.usage(), (8, 8 * SLOT));
        // "a" is used again, so "b" and then "c" are now the least recently used. One more copy
        // makes room for itself and an eighth of the budget more.
        assert!(local.get("a", Instant::now()).is_some());
        local.put("i", Generation(1), payload(99), later());
        assert_eq!(local.usage(), (7, 7 * SLOT));
        for (k, kept) in [
            ("a", true),
            ("b", false),
            ("c", false),
            ("d", true),
            ("i", true),
        ] {
            assert_eq!(local.get(k, Instant::now()).is_some(), kept, "{k}");
        }
    }

    #[test]
    fn many_small_copies_stay_within_the_budget_counted_with_their_overhead() {
        let budget = 64 * 1024;
        let local = LocalCopies::new(budget);
        for id in 0..10_000 {
            local.put(
                &format!("task:{id}:version"),
                Generation(1),
                payload(8),
                later(),
            );
            assert!(local.usage().1 <= budget);
        }
        let (copies, bytes) = local.usage();
        // Counted at about 180 bytes each, not at their 24 bytes of key and payload.
        assert!(copies < budget / COPY_OVERHEAD, "{copies} copies");
        assert!(copies > budget / (2 * SLOT), "{copies} copies");
        assert!(bytes > budget / 2);
        // The newest are kept.
        assert!(local.get("task:9999:version", Instant::now()).is_some());
        assert!(local.get("task:0:version", Instant::now()).is_none());
    }

    #[test]
    fn a_payload_over_an_eighth_of_the_budget_is_not_copied() {
        let local = LocalCopies::new(8 * SLOT);
        local.put("k", Generation(1), payload(99), later());
        assert!(local.get("k", Instant::now()).is_some());
        // Too big: not kept, and the older copy of the same key is not served either.
        local.put("k", Generation(2), payload(100), later());
        assert_eq!(local.get("k", Instant::now()), None);
        assert_eq!(local.usage(), (0, 0));
    }

    #[test]
    fn no_copy_is_kept_under_a_generation_other_than_the_latest_seen() {
        let local = LocalCopies::new(1 << 20);
        // This process bumped the generation to 8 while a read under 7 ran: its entry is stale
        // before it is stored, and a copy would only cost its next reader a round trip.
        local.clear(Some(Generation(8)));
        local.put("k", Generation(7), payload(3), later());
        assert_eq!(local.get("k", Instant::now()), None);
        local.put("k", Generation(8), payload(3), later());
        assert!(local.get("k", Instant::now()).is_some());
        // A lookup saw another replica's bump.
        local.saw(Generation(9));
        local.put("j", Generation(8), payload(3), later());
        assert_eq!(local.get("j", Instant::now()), None);
        // Whatever the generation seen, a copy is still checked against Redis before use, so
        // "k" may stay.
        assert!(local.get("k", Instant::now()).is_some());
    }

    #[test]
    fn a_late_answer_of_an_earlier_bump_clears_nothing_and_copies_nothing() {
        let local = LocalCopies::new(1 << 20);
        // Bump to 9 handled first, then the earlier bump to 8.
        local.clear(Some(Generation(9)));
        local.put("k", Generation(9), payload(3), later());
        local.clear(Some(Generation(8)));
        assert!(local.get("k", Instant::now()).is_some());
        local.put("k", Generation(8), payload(3), later());
        assert_eq!(
            local.get("k", Instant::now()).map(|c| c.0),
            Some(Generation(9))
        );
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let local = LocalCopies::new(0);
        local.put("k", Generation(1), payload(1), later());
        assert_eq!(local.get("k", Instant::now()), None);
        assert!(!local.enabled());
    }
}
