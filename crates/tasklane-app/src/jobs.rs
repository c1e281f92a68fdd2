//! Background jobs of a running server: the periodic cleanup of expired idempotency keys.

use std::sync::Arc;
use std::time::Duration;
use tasklane_domain::TaskService;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// The shortest period the cleanup accepts: a zero period would make `tokio::time::interval`
/// panic, and anything much shorter would only load the store.
const MIN_PERIOD: Duration = Duration::from_secs(1);

/// Every `every` (at least a second; the first run at once), removes the idempotency keys older
/// than 24 hours. Every replica may run it: the store's purge removes each key once, in small
/// batches. A failure is logged at warn and the next run tries again; the task never panics and
/// runs until aborted through the handle (or the runtime stops).
pub fn spawn_idempotency_cleanup(service: Arc<TaskService>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(MIN_PERIOD));
        // After a stall (a slow store), wait a full period again rather than run in a burst.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match service.purge_expired_idempotency_keys().await {
                Ok(purged) => tracing::debug!(purged, "expired idempotency keys removed"),
                Err(e) => tracing::warn!(
                    error = %e,
                    cause = ?std::error::Error::source(&e),
                    "could not remove expired idempotency keys; retrying at the next run"
                ),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tasklane_domain::{MockTaskRepository, RepoError, IDEMPOTENCY_KEY_TTL};

    #[tokio::test]
    async fn the_cleanup_purges_day_old_keys_every_period_and_survives_failures() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut repo = MockTaskRepository::new();
        repo.expect_purge_idempotency_keys().returning({
            let calls = Arc::clone(&calls);
            move |age| {
                assert_eq!(age, IDEMPOTENCY_KEY_TTL);
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(RepoError::Unavailable("down".into())),
                    _ => Ok(3),
                }
            }
        });
        let service = Arc::new(TaskService::new(
            Arc::new(repo),
            None,
            Duration::from_millis(100),
        ));

        // A zero period is taken as the minimum (1 s) rather than panicking. The first run is at
        // once and fails; the job goes on to run again a second later.
        let job = spawn_idempotency_cleanup(service, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(1_500)).await;

        assert!(!job.is_finished(), "the job stopped: {job:?}");
        job.abort();
        assert!(job.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
