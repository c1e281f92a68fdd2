//! `TaskService`: the use cases, on top of the ports. It owns the cache-aside protocol, so that
//! every adapter pair gets the same guarantees:
//!
//! - a list read that begins after a write was acknowledged never misses that write: writes
//!   bump the cache generation before they are acknowledged, and a hit must carry the current
//!   generation (checked in the same round trip as the entry is fetched);
//! - a write whose bump failed leaves a debt, paid (by bumping) before this process uses the
//!   cache again;
//! - a cache failure never fails a request: the store answers instead.

use crate::ports::{
    BoxError, CacheError, CacheLookup, Generation, RepoError, TaskCache, TaskRepository,
};
use crate::query::{ListQuery, Page, StatusCounts};
use crate::task::{NewTask, Precondition, Task, TaskId, TaskPatch};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a use case can fail with. The HTTP layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("task not found")]
    NotFound,
    #[error("the task changed since the given version")]
    PreconditionFailed,
    #[error("the task store is unavailable")]
    Unavailable(#[source] BoxError),
    #[error("unexpected error")]
    Unexpected(#[source] BoxError),
}

impl From<RepoError> for ServiceError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound => ServiceError::NotFound,
            RepoError::PreconditionFailed => ServiceError::PreconditionFailed,
            RepoError::Unavailable(e) => ServiceError::Unavailable(e),
            RepoError::Unexpected(e) => ServiceError::Unexpected(e),
        }
    }
}

/// The cache's state as health reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHealth {
    Connected,
    Disconnected,
    /// No cache is configured.
    Disabled,
}

/// What the health check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub store_ok: bool,
    pub cache: CacheHealth,
}

/// Counters of the list cache's outcomes since start.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
}

/// The task use cases.
pub struct TaskService {
    repo: Arc<dyn TaskRepository>,
    cache: Option<Arc<dyn TaskCache>>,
    cache_budget: Duration,
    /// Failed generation bumps not yet made good. Non-zero means: bump before the next use.
    debt: AtomicU64,
    stats: CacheStats,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("cached", &self.cache.is_some())
            .field("cache_budget", &self.cache_budget)
            .field("debt", &self.debt)
            .finish_non_exhaustive()
    }
}

impl TaskService {
    /// `cache_budget` bounds the time one request spends on cache work in total.
    pub fn new(
        repo: Arc<dyn TaskRepository>,
        cache: Option<Arc<dyn TaskCache>>,
        cache_budget: Duration,
    ) -> Self {
        Self {
            repo,
            cache,
            cache_budget,
            debt: AtomicU64::new(0),
            stats: CacheStats::default(),
        }
    }

    pub fn cache_stats(&self) -> &CacheStats {
        &self.stats
    }

    pub fn has_cache(&self) -> bool {
        self.cache.is_some()
    }

    pub async fn create(&self, new: NewTask) -> Result<Task, ServiceError> {
        let result = self.repo.create(new).await;
        self.after_write(&result).await;
        Ok(result?)
    }

    pub async fn get(&self, id: TaskId) -> Result<Task, ServiceError> {
        Ok(self.repo.get(id).await?)
    }

    pub async fn update(
        &self,
        id: TaskId,
        patch: TaskPatch,
        precondition: Precondition,
    ) -> Result<Task, ServiceError> {
        let result = self.repo.update(id, patch, precondition).await;
        self.after_write(&result).await;
        Ok(result?)
    }

    pub async fn delete(&self, id: TaskId, precondition: Precondition) -> Result<(), ServiceError> {
        let result = self.repo.delete(id, precondition).await;
        self.after_write(&result).await;
        Ok(result?)
    }

    pub async fn counts(&self) -> Result<StatusCounts, ServiceError> {
        Ok(self.repo.counts().await?)
    }

    /// One page of the list, straight from the store.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, ServiceError> {
        Ok(self.repo.list(query).await?)
    }

    /// One page of the list, rendered by `render` (the caller's representation, cached as is).
    pub async fn list_rendered<R>(
        &self,
        query: &ListQuery,
        render: R,
    ) -> Result<Bytes, ServiceError>
    where
        R: FnOnce(&Page) -> Bytes + Send,
    {
        let key = query.cache_key();
        let mut store_under: Option<(Generation, Duration)> = None;
        if let Some(cache) = &self.cache {
            let started = Instant::now();
            let deadline = started + self.cache_budget;
            if self.settle_debt(cache.as_ref(), deadline).await {
                match cache.lookup(&key, deadline).await {
                    Ok(CacheLookup::Hit(bytes)) => {
                        self.stats.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(bytes);
                    }
                    Ok(CacheLookup::Miss(generation)) => {
                        self.stats.misses.fetch_add(1, Ordering::Relaxed);
                        let left = self.cache_budget.saturating_sub(started.elapsed());
                        store_under = generation.map(|g| (g, left));
                    }
                    Err(e) => self.cache_failed("lookup", &e),
                }
            }
        }

        let page = self.repo.list(query).await?;
        let bytes = render(&page);

        if let (Some(cache), Some((generation, left))) = (&self.cache, store_under) {
            if !left.is_zero() {
                let deadline = Instant::now() + left;
                if let Err(e) = cache.store(&key, generation, bytes.clone(), deadline).await {
                    self.cache_failed("store", &e);
                }
            }
        }
        Ok(bytes)
    }

    /// Asks the store and the cache whether they answer.
    pub async fn health(&self) -> Health {
        let store_ok = self.repo.ping().await.is_ok();
        let cache = match &self.cache {
            None => CacheHealth::Disabled,
            Some(cache) => match cache.ping(Instant::now() + self.cache_budget).await {
                Ok(()) => CacheHealth::Connected,
                Err(_) => CacheHealth::Disconnected,
            },
        };
        Health { store_ok, cache }
    }

    /// After a write: unless the store proved that nothing was written, move the cache
    /// generation on (or owe it).
    async fn after_write<T>(&self, result: &Result<T, RepoError>) {
        let maybe_written = !matches!(
            result,
            Err(RepoError::NotFound | RepoError::PreconditionFailed)
        );
        let Some(cache) = &self.cache else { return };
        if !maybe_written {
            return;
        }
        let deadline = Instant::now() + self.cache_budget;
        if let Err(e) = cache.bump_generation(deadline).await {
            self.debt.fetch_add(1, Ordering::SeqCst);
            self.cache_failed("bump_generation (owed until the cache answers)", &e);
        }
    }

    /// Pays any owed generation bump. Returns whether the cache may be used now.
    async fn settle_debt(&self, cache: &dyn TaskCache, deadline: Instant) -> bool {
        let owed = self.debt.load(Ordering::SeqCst);
        if owed == 0 {
            return true;
        }
        match cache.bump_generation(deadline).await {
            Ok(()) => {
                // A failure recorded meanwhile keeps the debt for the next caller to pay.
                let _ = self
                    .debt
                    .compare_exchange(owed, 0, Ordering::SeqCst, Ordering::SeqCst);
                tracing::info!("cache generation bumped; owed invalidations paid");
                true
            }
            Err(e) => {
                self.cache_failed("bump_generation (paying debt)", &e);
                false
            }
        }
    }

    fn cache_failed(&self, op: &str, e: &CacheError) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, cause = ?std::error::Error::source(e), op, "cache failed; serving from the store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{MockTaskCache, MockTaskRepository};
    use crate::query::Limit;
    use crate::task::{Description, Status, Title, Version};
    use chrono::Utc;
    use mockall::predicate::eq;

    fn task(id: i64) -> Task {
        let now = Utc::now();
        Task {
            id: TaskId::new(id).unwrap_or_else(|| unreachable!()),
            title: Title::new(format!("t{id}")).unwrap_or_else(|_| unreachable!()),
            description: Description::default(),
            status: Status::Todo,
            created_at: now,
            updated_at: now,
            version: Version::new(1),
        }
    }

    fn new_task() -> NewTask {
        NewTask {
            title: Title::new("x").unwrap_or_else(|_| unreachable!()),
            description: Description::default(),
            status: Status::Todo,
        }
    }

    fn unavailable() -> CacheError {
        CacheError::Unavailable("down".into())
    }

    fn render(page: &Page) -> Bytes {
        Bytes::from(format!("{} tasks", page.tasks.len()))
    }

    fn service(repo: MockTaskRepository, cache: MockTaskCache) -> TaskService {
        TaskService::new(
            Arc::new(repo),
            Some(Arc::new(cache)),
            Duration::from_millis(100),
        )
    }

    #[tokio::test]
    async fn a_hit_is_served_without_touching_the_store() {
        let mut repo = MockTaskRepository::new();
        repo.expect_list().never();
        let mut cache = MockTaskCache::new();
        cache
            .expect_lookup()
            .times(1)
            .returning(|_, _| Ok(CacheLookup::Hit(Bytes::from_static(b"cached"))));
        let svc = service(repo, cache);

        let body = svc.list_rendered(&ListQuery::default(), render).await;

        assert_eq!(body.ok(), Some(Bytes::from_static(b"cached")));
        assert_eq!(svc.cache_stats().hits.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_miss_reads_the_store_and_stores_under_the_generation_it_saw() {
        let mut repo = MockTaskRepository::new();
        repo.expect_list()
            .times(1)
            .returning(|q| Ok(Page::from_rows(vec![task(2), task(1)], q.limit)));
        let mut cache = MockTaskCache::new();
        cache
            .expect_lookup()
            .times(1)
            .returning(|_, _| Ok(CacheLookup::Miss(Some(Generation(7)))));
        cache
            .expect_store()
            .withf(|key, generation, value, _| {
                key == ListQuery::default().cache_key()
                    && *generation == Generation(7)
                    && value.as_ref() == b"2 tasks"
            })
            .times(1)
            .returning(|_, _, _, _| Ok(()));
        let svc = service(repo, cache);

        let body = svc.list_rendered(&ListQuery::default(), render).await;

        assert_eq!(body.ok(), Some(Bytes::from_static(b"2 tasks")));
        assert_eq!(svc.cache_stats().misses.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_miss_without_a_generation_stores_nothing() {
        let mut repo = MockTaskRepository::new();
        repo.expect_list()
            .returning(|q| Ok(Page::from_rows(vec![], q.limit)));
        let mut cache = MockTaskCache::new();
        cache
            .expect_lookup()
            .returning(|_, _| Ok(CacheLookup::Miss(None)));
        cache.expect_store().never();
        let svc = service(repo, cache);

        assert!(svc
            .list_rendered(&ListQuery::default(), render)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn every_write_bumps_the_generation_before_returning() {
        let mut repo = MockTaskRepository::new();
        repo.expect_create().times(1).returning(|_| Ok(task(1)));
        repo.expect_update()
            .times(1)
            .returning(|_, _, _| Ok(task(1)));
        repo.expect_delete().times(1).returning(|_, _| Ok(()));
        let mut cache = MockTaskCache::new();
        cache
            .expect_bump_generation()
            .times(3)
            .returning(|_| Ok(()));
        let svc = service(repo, cache);
        let id = TaskId::new(1).unwrap_or_else(|| unreachable!());

        assert!(svc.create(new_task()).await.is_ok());
        assert!(svc
            .update(id, TaskPatch::default(), Precondition::None)
            .await
            .is_ok());
        assert!(svc.delete(id, Precondition::None).await.is_ok());
    }

    #[tokio::test]
    async fn a_refused_write_does_not_bump_but_an_indeterminate_one_does() {
        let mut repo = MockTaskRepository::new();
        repo.expect_update()
            .times(1)
            .returning(|_, _, _| Err(RepoError::PreconditionFailed));
        repo.expect_delete()
            .times(1)
            .returning(|_, _| Err(RepoError::Unavailable("timed out".into())));
        let mut cache = MockTaskCache::new();
        cache
            .expect_bump_generation()
            .times(1)
            .returning(|_| Ok(()));
        let svc = service(repo, cache);
        let id = TaskId::new(1).unwrap_or_else(|| unreachable!());

        assert!(matches!(
            svc.update(
                id,
                TaskPatch::default(),
                Precondition::Version(Version::new(3))
            )
            .await,
            Err(ServiceError::PreconditionFailed)
        ));
        assert!(matches!(
            svc.delete(id, Precondition::None).await,
            Err(ServiceError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_cache_error_falls_back_to_the_store() {
        let mut repo = MockTaskRepository::new();
        repo.expect_list()
            .times(1)
            .returning(|q| Ok(Page::from_rows(vec![task(1)], q.limit)));
        let mut cache = MockTaskCache::new();
        cache.expect_lookup().returning(|_, _| Err(unavailable()));
        cache.expect_store().never();
        let svc = service(repo, cache);

        let body = svc.list_rendered(&ListQuery::default(), render).await;

        assert_eq!(body.ok(), Some(Bytes::from_static(b"1 tasks")));
        assert_eq!(svc.cache_stats().errors.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_failed_bump_is_owed_and_paid_before_the_next_lookup() {
        let mut repo = MockTaskRepository::new();
        repo.expect_create().returning(|_| Ok(task(1)));
        repo.expect_list()
            .returning(|q| Ok(Page::from_rows(vec![task(1)], q.limit)));
        let mut cache = MockTaskCache::new();
        let mut seq = mockall::Sequence::new();
        // The write's own bump fails: Redis is unreachable.
        cache
            .expect_bump_generation()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(unavailable()));
        // The next read still cannot pay: it must not use the cache at all.
        cache
            .expect_bump_generation()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(unavailable()));
        // Redis is back: the debt is paid first, then the lookup happens.
        cache
            .expect_bump_generation()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        cache
            .expect_lookup()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(CacheLookup::Miss(Some(Generation(9)))));
        cache
            .expect_store()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _, _| Ok(()));
        // The debt is paid: the read after that goes straight to the lookup.
        cache
            .expect_lookup()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(CacheLookup::Hit(Bytes::from_static(b"hit"))));
        let svc = service(repo, cache);

        assert!(
            svc.create(new_task()).await.is_ok(),
            "write succeeds though Redis is down"
        );
        let q = ListQuery::default();
        assert_eq!(
            svc.list_rendered(&q, render).await.ok(),
            Some(Bytes::from_static(b"1 tasks"))
        );
        assert_eq!(
            svc.list_rendered(&q, render).await.ok(),
            Some(Bytes::from_static(b"1 tasks"))
        );
        assert_eq!(
            svc.list_rendered(&q, render).await.ok(),
            Some(Bytes::from_static(b"hit"))
        );
    }

    #[tokio::test]
    async fn health_reports_store_and_cache_separately() {
        let mut repo = MockTaskRepository::new();
        repo.expect_ping().returning(|| Ok(()));
        let mut cache = MockTaskCache::new();
        cache.expect_ping().returning(|_| Err(unavailable()));
        let svc = service(repo, cache);

        assert_eq!(
            svc.health().await,
            Health {
                store_ok: true,
                cache: CacheHealth::Disconnected
            }
        );
    }

    #[tokio::test]
    async fn without_a_cache_everything_goes_to_the_store() {
        let mut repo = MockTaskRepository::new();
        repo.expect_get()
            .with(eq(TaskId::new(5).unwrap_or_else(|| unreachable!())))
            .returning(|_| Err(RepoError::NotFound));
        repo.expect_list().returning(|q| {
            assert_eq!(q.limit, Limit::default());
            Ok(Page::default())
        });
        repo.expect_ping()
            .returning(|| Err(RepoError::Unavailable("gone".into())));
        let svc = TaskService::new(Arc::new(repo), None, Duration::from_millis(100));

        assert!(matches!(
            svc.get(TaskId::new(5).unwrap_or_else(|| unreachable!()))
                .await,
            Err(ServiceError::NotFound)
        ));
        assert!(svc
            .list_rendered(&ListQuery::default(), render)
            .await
            .is_ok());
        assert_eq!(
            svc.health().await,
            Health {
                store_ok: false,
                cache: CacheHealth::Disabled
            }
        );
    }
}
