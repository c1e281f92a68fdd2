//! A bulkhead for text searches: at most so many run on PostgreSQL at once, and the rest wait
//! their turn in arrival order, in this process, for a bounded time.
//!
//! A search is the one list query whose cost has no small bound: a phrase made of trigrams most
//! rows contain costs milliseconds of CPU in the trigram indexes, and a word that the newest rows
//! lack walks many rows in list order. Every other statement touches a few rows by index. With
//! only the pool to limit them, a burst of searches holds every connection, so point reads and
//! writes queue behind them; and the searches run side by side on the database's cores, which
//! share CPU time among them, so each one takes as long as all of them together and the slow
//! ones end up far behind the fast. Given fewer slots than connections, searches leave the rest
//! of the pool to everything else, and waiting here in order (tokio's semaphore is fair) instead
//! of time-sliced there makes a search's latency about the queue ahead of it plus its own cost:
//! the same throughput, a much shorter tail (docs/PERFORMANCE.md, section 9).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tasklane_domain::RepoError;
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};

/// Every search slot stayed taken for as long as a caller may wait.
#[derive(Debug, thiserror::Error)]
#[error(
    "all {slots} search slots stayed busy for {} ms",
    self.waited.as_millis()
)]
pub(crate) struct SearchSlotsBusy {
    slots: usize,
    waited: Duration,
}

/// The slots, and how many callers wait for one.
#[derive(Debug)]
pub(crate) struct SearchSlots {
    permits: Semaphore,
    max: usize,
    waiting: AtomicUsize,
    wait: Duration,
}

/// What the slots look like right now (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchSlotsStatus {
    /// Searches allowed to run at once.
    pub max: usize,
    /// Searches running (holding a slot).
    pub running: usize,
    /// Searches waiting for a slot.
    pub waiting: usize,
}

/// How many searches may run at once unless configured: half the pool, at least one, so that
/// searches never hold every connection.
#[must_use]
pub fn default_search_slots(pool_size: usize) -> usize {
    (pool_size / 2).max(1)
}

impl SearchSlots {
    /// `max` slots (at least one); a caller waits at most `wait` for one.
    pub(crate) fn new(max: usize, wait: Duration) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Semaphore::new(max),
            max,
            waiting: AtomicUsize::new(0),
            wait,
        }
    }

    /// A slot, held until the permit is dropped; `Unavailable` after waiting in vain.
    pub(crate) async fn acquire(&self) -> Result<SemaphorePermit<'_>, RepoError> {
        match self.permits.try_acquire() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::NoPermits) => {}
            Err(TryAcquireError::Closed) => unreachable!("the search slots are never closed"),
        }
        let _waiting = Waiting::enter(&self.waiting);
        match tokio::time::timeout(self.wait, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => unreachable!("the search slots are never closed"),
            Err(_elapsed) => Err(RepoError::Unavailable(Box::new(SearchSlotsBusy {
                slots: self.max,
                waited: self.wait,
            }))),
        }
    }

    pub(crate) fn status(&self) -> SearchSlotsStatus {
        SearchSlotsStatus {
            max: self.max,
            running: self.max.saturating_sub(self.permits.available_permits()),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }
}

/// Counts a waiting caller for as long as it waits, also when its request is dropped mid-wait
/// (a client that hangs up). The pool counts its waiters with it too.
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(crate) fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn half_the_pool_by_default_and_never_none() {
        assert_eq!(default_search_slots(8), 4);
        assert_eq!(default_search_slots(5), 2);
        assert_eq!(default_search_slots(1), 1);
        assert_eq!(default_search_slots(0), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_past_the_slots_wait_in_order_then_give_up() {
        let slots = SearchSlots::new(2, Duration::from_millis(500));
        let first = slots.acquire().await.unwrap();
        let _second = slots.acquire().await.unwrap();
        assert_eq!(
            slots.status(),
            SearchSlotsStatus {
                max: 2,
                running: 2,
                waiting: 0
            }
        );

        // A third waits, and gets the slot the moment one is given back.
        let third = slots.acquire();
        tokio::pin!(third);
        assert!(third.as_mut().now_or_never().is_none());
        assert_eq!(slots.status().waiting, 1);
        drop(first);
        let third = third.await.unwrap();
        assert_eq!(slots.status().waiting, 0);
        assert_eq!(slots.status().running, 2);

        // A fourth waits its full time, then is told the database is busy (a 503), not an error
        // of the request.
        let started = tokio::time::Instant::now();
        let refused = slots.acquire().await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        match refused {
            RepoError::Unavailable(why) => {
                assert_eq!(why.to_string(), "all 2 search slots stayed busy for 500 ms")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(slots.status().waiting, 0);
        drop(third);
        assert_eq!(slots.status().running, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_dropped_while_waiting_is_no_longer_counted() {
        let slots = SearchSlots::new(1, Duration::from_secs(5));
        let _held = slots.acquire().await.unwrap();
        {
            let waiter = slots.acquire();
            tokio::pin!(waiter);
            assert!(waiter.as_mut().now_or_never().is_none());
            assert_eq!(slots.status().waiting, 1);
        }
        assert_eq!(slots.status().waiting, 0);
    }

    #[test]
    fn zero_slots_means_one() {
        assert_eq!(SearchSlots::new(0, Duration::from_secs(1)).status().max, 1);
    }
}
