//! The ports: what the domain needs from a task store and from a cache. Adapters implement them.

use crate::idempotency::Idempotency;
use crate::query::{ListQuery, Page, StatusCounts};
use crate::task::{NewTask, Precondition, Task, TaskId, TaskPatch};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::TimeDelta;
use std::time::Instant;

/// A boxed error from an adapter, kept for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every outcome of a [`TaskRepository`] call other than success.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// No task has this id.
    #[error("task not found")]
    NotFound,
    /// The task exists but the write's [`Precondition`] does not hold.
    #[error("the task changed since the given version")]
    PreconditionFailed,
    /// The idempotency key was first used with a different request. Nothing is written.
    #[error("the idempotency key was used with a different request")]
    IdempotencyKeyReused,
    /// The idempotency key is held by a create that has not finished (in another process, or
    /// on another connection). Nothing is written; retrying later gets the first create's
    /// outcome.
    #[error("a request with this idempotency key is still in progress")]
    IdempotencyKeyInFlight,
    /// The store cannot be reached or is overloaded (pool exhausted, connection refused,
    /// timed out). Worth retrying later; for a write, whether it happened is unknown.
    #[error("the task store is unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else: a bug or a broken invariant.
    #[error("unexpected task store error")]
    Unexpected(#[source] BoxError),
}

/// What [`TaskRepository::create`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The task as created: on a replay, as it was when first created (version 1,
    /// `updated_at == created_at`), whatever happened to it since, deletion included.
    pub task: Task,
    /// Whether this is the answer of an earlier create with the same idempotency key, and
    /// nothing was written now.
    pub replayed: bool,
}

/// Durable storage of tasks.
///
/// Every write is atomic, bumps the task's version by one and sets `updated_at`, and keeps the
/// per-status counts in step in the same transaction.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait TaskRepository: Send + Sync {
    /// Stores a new task with version 1.
    ///
    /// With an [`Idempotency`], the key is stored in the same transaction as the task, with a
    /// snapshot of the task as created and the request's fingerprint. A later create with the
    /// same key and fingerprint, within the key's `ttl`, writes nothing and returns the snapshot
    /// with `replayed` set. A key older than its `ttl` counts as absent and is replaced.
    ///
    /// # Errors
    /// `IdempotencyKeyReused` when the key is stored with a different fingerprint;
    /// `IdempotencyKeyInFlight` when another transaction holds the key and has not committed
    /// (in neither case is anything written); otherwise `Unavailable` or `Unexpected` only.
    async fn create(
        &self,
        new: NewTask,
        idempotency: Option<Idempotency>,
    ) -> Result<Created, RepoError>;

    /// # Errors
    /// `NotFound` when no task has this id.
    async fn get(&self, id: TaskId) -> Result<Task, RepoError>;

    /// One page of tasks matching the query, newest first (`created_at DESC, id DESC`), starting
    /// strictly after the cursor. `next` is set exactly when more matching tasks exist.
    ///
    /// # Errors
    /// `Unavailable` or `Unexpected` only.
    async fn list(&self, query: &ListQuery) -> Result<Page, RepoError>;

    /// Applies the patch: absent fields keep their value; the version goes up by one and
    /// `updated_at` moves even when no field changes.
    ///
    /// # Errors
    /// `NotFound` when no task has this id; `PreconditionFailed` when it exists but the
    /// precondition does not hold (nothing is written).
    async fn update(
        &self,
        id: TaskId,
        patch: TaskPatch,
        precondition: Precondition,
    ) -> Result<Task, RepoError>;

    /// # Errors
    /// As for [`TaskRepository::update`].
    async fn delete(&self, id: TaskId, precondition: Precondition) -> Result<(), RepoError>;

    /// The number of tasks in each status, in O(1) (not a scan of the tasks).
    ///
    /// # Errors
    /// `Unavailable` or `Unexpected` only.
    async fn counts(&self) -> Result<StatusCounts, RepoError>;

    /// Forgets the idempotency keys stored more than `older_than` ago (a negative age forgets
    /// every key) and returns how many it removed. It works in small batches, each its own
    /// transaction, so it never holds locks for long, and several processes may run it at once:
    /// each key is removed once.
    ///
    /// # Errors
    /// `Unavailable` or `Unexpected` only; the batches removed before the error stay removed.
    async fn purge_idempotency_keys(&self, older_than: TimeDelta) -> Result<u64, RepoError>;

    /// Proves the store answers a query now.
    ///
    /// # Errors
    /// `Unavailable` when it does not.
    async fn ping(&self) -> Result<(), RepoError>;
}

/// A cache failure. The service never lets one fail a request.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache did not answer before the deadline, or refused the connection, or its circuit
    /// breaker is open.
    #[error("the cache is unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else.
    #[error("unexpected cache error")]
    Unexpected(#[source] BoxError),
}

/// The cache's global generation: bumped after every committed write, so that an entry stored
/// under an older generation is never served again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

/// The outcome of a cache lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup {
    /// An entry stored under the current generation.
    Hit(Bytes),
    /// No usable entry. Carries the generation read in the same round trip, under which a value
    /// computed from the store *after* this lookup may be stored; `None` when the cache has no
    /// generation yet (then nothing should be stored this time).
    Miss(Option<Generation>),
}

/// A list entry to replace in the same atomic step as a generation bump: see
/// [`TaskCache::bump_generation_replacing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The entry's key, as for [`TaskCache::store`].
    pub key: String,
    /// The generation the bump must start from for the replacement to be made.
    pub expected_generation: Generation,
    /// What the entry must hold, stored under `expected_generation`, for the replacement to be
    /// made: proof that it is the page `value` was derived from.
    pub expected_value: Bytes,
    /// The value for the generation after `expected_generation`.
    pub value: Bytes,
}

/// A shared cache of rendered list pages (keyed by [`ListQuery::cache_key`]) and task versions
/// (keyed by [`crate::version_key`]). Values are opaque bytes: the caller decides what they
/// hold.
///
/// Contract: `lookup` returns `Hit` only for an entry stored under the generation current at
/// the time of the lookup (read in the same round trip); an entry that cannot be read (corrupt,
/// wrong format, other release's schema) is a `Miss`. Every call gives up at `deadline`.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait TaskCache: Send + Sync {
    /// # Errors
    /// `Unavailable` when the cache cannot answer by the deadline.
    async fn lookup(&self, key: &str, deadline: Instant) -> Result<CacheLookup, CacheError>;

    /// Stores `value` as computed under `generation`. Entries expire after the adapter's TTL.
    ///
    /// # Errors
    /// `Unavailable` when the cache cannot answer by the deadline.
    async fn store(
        &self,
        key: &str,
        generation: Generation,
        value: Bytes,
        deadline: Instant,
    ) -> Result<(), CacheError>;

    /// Moves the generation on, so that no entry stored before is served again. A write's
    /// bump: a cache that fails calls fast while it seems unwell (a circuit breaker) still
    /// tries this one within the deadline, since one not made leaves other replicas serving
    /// what it invalidates.
    ///
    /// # Errors
    /// `Unavailable` when the cache cannot answer by the deadline.
    async fn bump_generation(&self, deadline: Instant) -> Result<(), CacheError>;

    /// The bump this process owes after one failed, paid on a reader's time: as
    /// [`TaskCache::bump_generation`], except that a cache that fails calls fast while it seems
    /// unwell may fail this one fast too (the reader then reads the store).
    ///
    /// # Errors
    /// `Unavailable` when the cache cannot answer by the deadline, or will not try.
    async fn pay_owed_bump(&self, deadline: Instant) -> Result<(), CacheError> {
        self.bump_generation(deadline).await
    }

    /// Moves the generation on, as [`TaskCache::bump_generation`] does, and in the same atomic
    /// step (no lookup sees one without the other) stores each replacement's `value` under the
    /// new generation, keeping its entry's expiry, if and only if the generation before the
    /// bump was its `expected_generation` and the entry held exactly its `expected_value` under
    /// that generation. Answers, for each replacement in order, whether it was made.
    ///
    /// # Errors
    /// `Unavailable` when the cache cannot answer by the deadline (whether the bump happened is
    /// then unknown, as for [`TaskCache::bump_generation`]).
    async fn bump_generation_replacing(
        &self,
        replacements: &[Replacement],
        deadline: Instant,
    ) -> Result<Vec<bool>, CacheError>;

    /// Proves the cache answers now.
    ///
    /// # Errors
    /// `Unavailable` when it does not.
    async fn ping(&self, deadline: Instant) -> Result<(), CacheError>;
}
