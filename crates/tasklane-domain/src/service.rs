//! `TaskService`: the use cases, on top of the ports. It owns the cache-aside protocol, so that
//! every adapter pair gets the same guarantees:
//!
//! - a list read that begins after a write was acknowledged never misses that write: writes
//!   bump the cache generation before they are acknowledged, and a hit must carry the current
//!   generation (checked in the same round trip as the entry is fetched); the same holds for a
//!   task's revalidation answered from its cached version ([`TaskService::get_unless`]);
//! - a write whose bump failed leaves a debt, paid (by bumping) before this process uses the
//!   cache again, by its next reader or by the next write whose bump is made;
//! - the writes that finish while a bump is on its way share the next one (see `bumps`);
//! - a cache failure never fails a request: the store answers instead.
//!
//! It also keeps the idempotency keys of the creates running in this process, so that a
//! duplicate sent while the first is still running is refused at once (409) instead of queueing
//! behind it in the store.
//!
//! And it reads the store once, not once per reader, when many readers miss the same list entry
//! at the same time (single-flight): after a write bumps the generation, every hot reader misses
//! at once; the first one reads the store, and the others that saw the same generation wait for
//! its bytes instead of sending the same query. Keyed by the generation, so a reader that began
//! after a write was acknowledged (and so sees a newer generation) never waits for a read that
//! may predate that write. For the same reason a read's bytes, once it has finished, serve for a
//! moment the readers that miss the same entry under the same generation (see `Recent`).
//!
//! With a list renderer registered ([`TaskService::with_list_renderer`]), an update also writes
//! itself through into the unfiltered pages this process has read: the cache stores their next
//! version in the same step as the bump, so their readers keep hitting (see `write_through`).

use crate::bumps::{Bumps, Turn, Waited};
use crate::idempotency::{Idempotency, IdempotencyKey, IDEMPOTENCY_KEY_TTL};
use crate::ports::{
    BoxError, CacheError, CacheLookup, Created, Generation, RepoError, TaskCache, TaskRepository,
};
use crate::query::{ListQuery, Page, StatusCounts};
use crate::task::{NewTask, Precondition, Task, TaskId, TaskPatch, Version};
use crate::write_through::{Heads, ListRenderer};
use bytes::Bytes;
use compact_str::{CompactString, ToCompactString};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// What a use case can fail with. The HTTP layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("task not found")]
    NotFound,
    #[error("the task changed since the given version")]
    PreconditionFailed,
    /// The idempotency key was first used with a different request.
    #[error("the idempotency key was used with a different request")]
    IdempotencyKeyReused,
    /// A create with this idempotency key is still running (here or in another process).
    #[error("a request with this idempotency key is still in progress")]
    IdempotencyKeyInFlight,
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
            RepoError::IdempotencyKeyReused => ServiceError::IdempotencyKeyReused,
            RepoError::IdempotencyKeyInFlight => ServiceError::IdempotencyKeyInFlight,
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
    /// Updates written through into a cached list page (one per page replaced).
    pub replaced: AtomicU64,
    /// Writes whose bump was made by another write of the same group (see `bumps.rs`).
    pub shared_bumps: AtomicU64,
    /// Conditional task reads answered from a version in the cache, without the store.
    pub revalidation_hits: AtomicU64,
    /// Conditional task reads that read the store (no version cached, or not the caller's).
    pub revalidation_misses: AtomicU64,
}

/// What [`TaskService::get_unless`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revalidated {
    /// The task exists, and its current version is one the caller has: it was not read.
    Unchanged(Version),
    /// The task as the store has it now (its version may still be one the caller has).
    Current(Task),
}

/// The cache key of a task's version (list pages' keys start with `list:`), `task:{id}:version`.
/// Made on every revalidation, so it is built inline (up to 24 bytes: ids up to 11 digits) and
/// without the formatting machinery.
pub fn version_key(id: TaskId) -> CompactString {
    let mut key = CompactString::const_new("task:");
    key.push_str(&id.get().to_compact_string());
    key.push_str(":version");
    key
}

/// A version as cached: 8 bytes, big-endian.
fn encode_version(version: Version) -> Bytes {
    Bytes::copy_from_slice(&version.get().to_be_bytes())
}

/// The version in a cached value; `None` unless it is 8 bytes holding a positive number.
fn decode_version(bytes: &[u8]) -> Option<Version> {
    let raw = i64::from_be_bytes(bytes.try_into().ok()?);
    (raw > 0).then(|| Version::new(raw))
}

/// The outcome of [`TaskService::look_up`].
enum Looked {
    Hit(Bytes),
    /// `None` when the cache has no generation yet: nothing is to be stored this time.
    Miss(Option<Missed>),
    Unused,
}

/// A miss under a generation: what may be stored after it, and when.
#[derive(Clone, Copy)]
struct Missed {
    generation: Generation,
    /// What was left of the request's cache budget when the miss was answered.
    budget_left: Duration,
}

/// The task use cases.
pub struct TaskService {
    repo: Arc<dyn TaskRepository>,
    cache: Option<Arc<dyn TaskCache>>,
    cache_budget: Duration,
    /// Failed generation bumps not yet made good. Non-zero means: bump before the next use.
    debt: AtomicU64,
    stats: CacheStats,
    /// The idempotency keys of the creates running in this process.
    in_flight: Mutex<HashSet<IdempotencyKey>>,
    /// The store reads of missed list entries running now, by entry and generation.
    flights: Flights,
    /// How list pages are rendered, for write-through; none: every write is a plain bump.
    renderer: Option<ListRenderer>,
    /// The unfiltered pages updates are written through into.
    heads: Heads,
    /// The writes waiting for the bump on its way, to share the next one.
    bumps: Bumps<Option<Task>>,
}

/// A key of [`TaskService::in_flight`], released when dropped: when the create returns, fails,
/// panics, or its future is dropped (the client went away).
struct InFlight<'a> {
    keys: &'a Mutex<HashSet<IdempotencyKey>>,
    key: IdempotencyKey,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.keys).remove(&self.key);
    }
}

/// Every mutex here guards a value that each critical section leaves consistent (inserts,
/// removals, a swap), so one that a panic poisoned is still fine to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A missed list entry, under the generation its readers saw.
type FlightKey = (String, Generation);

/// How long a finished read's bytes serve readers that missed the same entry under the same
/// generation ([`Recent`]). It only has to cover a lookup that was already on its way when the
/// entry was stored; it also bounds how long this process can answer from memory while another
/// process owes the cache a bump it cannot make (its Redis entries live longer anyway).
const RECENT_FOR: Duration = Duration::from_secs(1);
/// At most this many bytes of finished reads are kept.
const RECENT_BYTES: usize = 2 << 20;

/// The list reads in flight (single-flight on cache misses), and the latest finished ones. No
/// runtime is needed: waiters are woken through their `Waker`s, so the domain stays free of
/// tokio.
#[derive(Default)]
struct Flights {
    running: Mutex<HashMap<FlightKey, Arc<Flight>>>,
    recent: Mutex<Recent>,
}

/// The bytes of the reads that finished under the newest generation a read was started under.
///
/// A lookup sent before a leader stored its entry misses, though the leader's bytes are just as
/// good for it: they were read from the store after the generation it saw was current. Without
/// this, such late readers find the flight over and each start another read of the store; under
/// a write every few hundred microseconds, reads of one entry ran back to back, about one per
/// write whatever the number of generations.
#[derive(Default)]
struct Recent {
    generation: Option<Generation>,
    pages: HashMap<String, (Instant, Bytes)>,
    bytes: usize,
}

impl Recent {
    fn get(&self, (key, generation): &FlightKey, now: Instant) -> Option<Bytes> {
        if self.generation != Some(*generation) {
            return None;
        }
        let (at, bytes) = self.pages.get(key)?;
        (now.duration_since(*at) < RECENT_FOR).then(|| bytes.clone())
    }

    fn put(&mut self, (key, generation): &FlightKey, bytes: &Bytes, now: Instant) {
        match self.generation {
            Some(newest) if newest > *generation => return,
            Some(newest) if newest == *generation => {}
            _ => {
                self.generation = Some(*generation);
                self.pages.clear();
                self.bytes = 0;
            }
        }
        if self.bytes + bytes.len() > RECENT_BYTES {
            return;
        }
        self.bytes += bytes.len();
        if let Some((_, old)) = self.pages.insert(key.clone(), (now, bytes.clone())) {
            self.bytes -= old.len();
        }
    }
}

/// One store read, and the readers waiting for its bytes.
#[derive(Default)]
struct Flight {
    state: Mutex<FlightState>,
}

#[derive(Default)]
struct FlightState {
    /// `None` while the read runs; then `Some(Some(bytes))`, or `Some(None)` when the leader
    /// failed or went away (its waiters then read the store themselves).
    outcome: Option<Option<Bytes>>,
    waiters: Vec<Waker>,
}

impl Flight {
    /// Settles the flight once (later calls do nothing) and wakes its waiters.
    fn settle(&self, outcome: Option<Bytes>) {
        let waiters = {
            let mut state = lock(&self.state);
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

/// A reader waiting for another reader's store read.
struct Follow(Arc<Flight>);

impl Future for Follow {
    type Output = Option<Bytes>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut state = lock(&self.0.state);
        match &state.outcome {
            Some(outcome) => Poll::Ready(outcome.clone()),
            None => {
                if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    state.waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// The reader that reads the store for a flight. Dropping it (done, failed, or cancelled because
/// the client went away) removes the flight and releases its waiters: with the bytes if
/// [`Lead::publish`] was called, else empty-handed.
struct Lead<'a> {
    flights: &'a Flights,
    key: FlightKey,
    flight: Arc<Flight>,
}

impl Lead<'_> {
    fn publish(&self, bytes: &Bytes) {
        lock(&self.flights.recent).put(&self.key, bytes, Instant::now());
        self.flight.settle(Some(bytes.clone()));
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        {
            let mut running = lock(&self.flights.running);
            if running
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                running.remove(&self.key);
            }
        }
        self.flight.settle(None);
    }
}

enum Role<'a> {
    Lead(Lead<'a>),
    Follow(Follow),
    /// A read of the same entry under the same generation has just finished: its bytes.
    Done(Bytes),
}

impl Flights {
    /// Joins the read of `key` running now, or takes the bytes of one just finished, or starts
    /// one.
    fn join(&self, key: FlightKey) -> Role<'_> {
        let mut running = lock(&self.running);
        if let Some(bytes) = lock(&self.recent).get(&key, Instant::now()) {
            return Role::Done(bytes);
        }
        if let Some(flight) = running.get(&key) {
            return Role::Follow(Follow(Arc::clone(flight)));
        }
        let flight = Arc::new(Flight::default());
        running.insert(key.clone(), Arc::clone(&flight));
        Role::Lead(Lead {
            flights: self,
            key,
            flight,
        })
    }
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
            in_flight: Mutex::new(HashSet::new()),
            flights: Flights::default(),
            renderer: None,
            heads: Heads::default(),
            bumps: Bumps::default(),
        }
    }

    /// Writes updates through into the cached unfiltered list pages, rendered by `renderer`,
    /// which must be the function readers pass to [`TaskService::list_rendered`] (the cache only
    /// takes a replacement built on the exact bytes it holds).
    #[must_use]
    pub fn with_list_renderer(mut self, renderer: ListRenderer) -> Self {
        self.renderer = Some(renderer);
        self
    }

    pub fn cache_stats(&self) -> &CacheStats {
        &self.stats
    }

    pub fn has_cache(&self) -> bool {
        self.cache.is_some()
    }

    /// Creates a task. With a key, a retry of the same request returns the first answer
    /// (`replayed`) and creates nothing, for [`IDEMPOTENCY_KEY_TTL`].
    ///
    /// # Errors
    /// `IdempotencyKeyInFlight` at once when a create with this key is running in this process
    /// (or, as the store says, in another); `IdempotencyKeyReused` when the key came with a
    /// different request; `Unavailable` or `Unexpected` from the store.
    pub async fn create(
        &self,
        new: NewTask,
        key: Option<IdempotencyKey>,
    ) -> Result<Created, ServiceError> {
        let (_in_flight, idempotency) = match key {
            Some(key) => (
                Some(self.hold(key.clone())?),
                Some(Idempotency::for_create(key, &new)),
            ),
            None => (None, None),
        };
        let result = self.repo.create(new, idempotency).await;
        // A replay wrote nothing, so the cache has nothing to forget.
        let replayed = matches!(&result, Ok(Created { replayed: true, .. }));
        if !replayed {
            self.after_write(&result).await;
        }
        Ok(result?)
    }

    /// Marks `key` as being created in this process until the guard is dropped.
    fn hold(&self, key: IdempotencyKey) -> Result<InFlight<'_>, ServiceError> {
        if !lock(&self.in_flight).insert(key.clone()) {
            return Err(ServiceError::IdempotencyKeyInFlight);
        }
        Ok(InFlight {
            keys: &self.in_flight,
            key,
        })
    }

    /// Forgets the idempotency keys older than [`IDEMPOTENCY_KEY_TTL`]; returns how many. Safe
    /// to run in every replica at once.
    ///
    /// # Errors
    /// `Unavailable` or `Unexpected` from the store.
    pub async fn purge_expired_idempotency_keys(&self) -> Result<u64, ServiceError> {
        Ok(self
            .repo
            .purge_idempotency_keys(IDEMPOTENCY_KEY_TTL)
            .await?)
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
        match &result {
            Ok(task) => self.after_update(task).await,
            Err(_) => self.after_write(&result).await,
        }
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
    ///
    /// On a miss, readers of the same entry under the same generation share one store read
    /// (single-flight); if that read fails or its reader goes away, each of them reads the store
    /// itself.
    pub async fn list_rendered<R>(
        &self,
        query: &ListQuery,
        render: R,
    ) -> Result<Bytes, ServiceError>
    where
        R: FnOnce(&Page) -> Bytes + Send,
    {
        let key = query.cache_key();
        let missed = match self.look_up(&key).await {
            Looked::Hit(bytes) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(bytes);
            }
            Looked::Miss(missed) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                missed
            }
            Looked::Unused => None,
        };

        let mut lead = None;
        if let Some(missed) = &missed {
            match self.flights.join((key.clone(), missed.generation)) {
                Role::Lead(l) => lead = Some(l),
                Role::Done(bytes) => return Ok(bytes),
                Role::Follow(follow) => {
                    if let Some(bytes) = follow.await {
                        return Ok(bytes);
                    }
                }
            }
        }

        let page = self.repo.list(query).await?;
        let bytes = render(&page);
        if let Some(lead) = lead {
            lead.publish(&bytes);
        }
        if let Some(missed) = missed {
            if self.renderer.is_some() {
                self.heads
                    .record(&key, query, missed.generation, &page, &bytes);
            }
            self.keep(&key, missed, bytes.clone()).await;
        }
        Ok(bytes)
    }

    /// Reads task `id`, unless its current version is one that `known` accepts (a conditional
    /// read: `If-None-Match`).
    ///
    /// With a cache, each task's version is an entry of its own ([`version_key`]) under the same
    /// generation as the list pages, so a version found there was current when the read began,
    /// as a list page found there is: a hit that `known` accepts answers without the store.
    /// Otherwise the store is read; after a miss, the version read is stored under the
    /// generation the miss saw. Plain reads ([`TaskService::get`]) leave the cache alone: only a
    /// client that revalidates pays for keeping its version there.
    ///
    /// # Errors
    /// `NotFound` when no task has this id (the cache never says a task is absent);
    /// `Unavailable` or `Unexpected` from the store.
    pub async fn get_unless<F>(&self, id: TaskId, known: F) -> Result<Revalidated, ServiceError>
    where
        F: Fn(Version) -> bool + Send,
    {
        let key = version_key(id);
        let missed = match self.look_up(&key).await {
            Looked::Hit(bytes) => match decode_version(&bytes) {
                Some(version) if known(version) => {
                    self.stats.revalidation_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Revalidated::Unchanged(version));
                }
                // The caller has another version (an older one, unless it made one up): it
                // needs the task. What the cache holds is still current.
                Some(_) => None,
                // Not written by this release (the port treats what it cannot read as a miss;
                // this is the same for bytes it can read but this service cannot): read the
                // store, and leave the entry to expire.
                None => None,
            },
            Looked::Miss(missed) => missed,
            Looked::Unused => None,
        };
        self.stats
            .revalidation_misses
            .fetch_add(1, Ordering::Relaxed);
        let task = self.repo.get(id).await?;
        if let Some(missed) = missed {
            self.keep(&key, missed, encode_version(task.version)).await;
        }
        Ok(Revalidated::Current(task))
    }

    /// The cache's answer for `key`, after paying any owed bump; `Unused` when there is no cache,
    /// or it failed, or it is owed a bump it could not be paid.
    async fn look_up(&self, key: &str) -> Looked {
        let Some(cache) = &self.cache else {
            return Looked::Unused;
        };
        let started = Instant::now();
        let deadline = started + self.cache_budget;
        if !self.settle_debt(cache.as_ref(), deadline).await {
            return Looked::Unused;
        }
        match cache.lookup(key, deadline).await {
            Ok(CacheLookup::Hit(bytes)) => Looked::Hit(bytes),
            Ok(CacheLookup::Miss(generation)) => {
                Looked::Miss(generation.map(|generation| Missed {
                    generation,
                    budget_left: self.cache_budget.saturating_sub(started.elapsed()),
                }))
            }
            Err(e) => {
                self.cache_failed("lookup", &e);
                Looked::Unused
            }
        }
    }

    /// Stores `bytes`, read from the store after the miss `missed`, under the generation that
    /// miss saw, within what is left of the request's cache budget.
    async fn keep(&self, key: &str, missed: Missed, bytes: Bytes) {
        let Some(cache) = &self.cache else { return };
        if missed.budget_left.is_zero() {
            return;
        }
        let deadline = Instant::now() + missed.budget_left;
        if let Err(e) = cache.store(key, missed.generation, bytes, deadline).await {
            self.cache_failed("store", &e);
        }
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
            Err(RepoError::NotFound
                | RepoError::PreconditionFailed
                | RepoError::IdempotencyKeyReused
                | RepoError::IdempotencyKeyInFlight)
        );
        if maybe_written {
            self.bump_after(None).await;
        }
    }

    /// After an update the store made: the bump, with the heads' next pages written through.
    async fn after_update(&self, task: &Task) {
        self.bump_after(Some(task.clone())).await;
    }

    /// The bump after a write (`Some(task)`: an update the store made; `None`: any other), made
    /// together with the writes of this process that finish while another bump is on its way
    /// (`bumps.rs`): one bump, sent after all of them committed, covers each.
    async fn bump_after(&self, change: Option<Task>) {
        let Some(cache) = &self.cache else { return };
        let group = match self.bumps.join(change) {
            Turn::Lead(group) => group,
            Turn::Wait(wait) => match wait.await {
                Waited::Done => return,
                Waited::Lead(group) => group,
                // The leader went away before its bump was made: this write's change came back.
                Waited::Orphaned(change) => {
                    let change = change.flatten();
                    return self.bump(cache.as_ref(), &[change.as_ref()]).await;
                }
            },
        };
        let changes: Vec<Option<&Task>> = group.changes().map(Option::as_ref).collect();
        if changes.len() > 1 {
            self.stats
                .shared_bumps
                .fetch_add(changes.len() as u64 - 1, Ordering::Relaxed);
        }
        self.bump(cache.as_ref(), &changes).await;
        group.finish();
    }

    /// One bump covering the writes `changes` (`Some`: an update the store made). If all are
    /// updates and nothing is owed, it writes the heads' next pages through; else it is plain.
    async fn bump(&self, cache: &dyn TaskCache, changes: &[Option<&Task>]) {
        let updates: Option<Vec<&Task>> = changes.iter().copied().collect();
        let replacements = match (&self.renderer, updates) {
            // An owed bump means a write this process acknowledged may be missing from the
            // heads; the plain bump below leaves the pages to miss.
            (Some(render), Some(tasks)) if self.debt.load(Ordering::SeqCst) == 0 => {
                self.heads.advance(&tasks, render)
            }
            _ => Vec::new(),
        };
        let deadline = Instant::now() + self.cache_budget;
        if replacements.is_empty() {
            let owed = self.debt.load(Ordering::SeqCst);
            let bumped = cache.bump_generation(deadline).await;
            // Moved on without replacements (or maybe not at all): no head can be replaced now.
            self.heads.clear();
            match bumped {
                // This bump came after every write whose bump had failed before it was sent: it
                // pays for them too (a failure recorded meanwhile keeps the debt).
                Ok(()) if owed > 0 => self.clear_debt(owed),
                Ok(()) => {}
                Err(e) => {
                    self.debt.fetch_add(1, Ordering::SeqCst);
                    self.cache_failed("bump_generation (owed until the cache answers)", &e);
                }
            }
            return;
        }
        match cache
            .bump_generation_replacing(&replacements, deadline)
            .await
        {
            Ok(made) => {
                let mut n = 0;
                for (i, r) in replacements.iter().enumerate() {
                    if made.get(i).copied().unwrap_or(false) {
                        n += 1;
                    } else {
                        self.heads.refused(r);
                    }
                }
                self.stats.replaced.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.heads.clear();
                self.debt.fetch_add(1, Ordering::SeqCst);
                self.cache_failed("bump_generation (owed until the cache answers)", &e);
            }
        }
    }

    /// Pays any owed generation bump. Returns whether the cache may be used now.
    async fn settle_debt(&self, cache: &dyn TaskCache, deadline: Instant) -> bool {
        let owed = self.debt.load(Ordering::SeqCst);
        if owed == 0 {
            return true;
        }
        let bumped = cache.pay_owed_bump(deadline).await;
        self.heads.clear();
        match bumped {
            Ok(()) => {
                self.clear_debt(owed);
                true
            }
            Err(e) => {
                self.cache_failed("bump_generation (paying debt)", &e);
                false
            }
        }
    }

    /// A bump sent when `owed` bumps were owed has been made: they are paid, unless a failure
    /// was recorded meanwhile (that one is left for the next caller to pay).
    fn clear_debt(&self, owed: u64) {
        if self
            .debt
            .compare_exchange(owed, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            tracing::info!("cache generation bumped; owed invalidations paid");
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
    use crate::ports::{MockTaskCache, MockTaskRepository, Replacement};
    use crate::query::Limit;
    use crate::task::{Description, Status, Title, Version};
    use async_trait::async_trait;
    use chrono::{TimeDelta, Utc};
    use mockall::predicate::eq;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Semaphore;

    #[test]
    fn version_keys_are_stable_for_every_id() {
        // Replicas of different releases share these keys in Redis: the text must not change.
        let key = |id| version_key(TaskId::new(id).unwrap());
        assert_eq!(key(1), "task:1:version");
        assert_eq!(key(12_345), "task:12345:version");
        // Longer than the 24 bytes held inline: still whole.
        assert_eq!(key(i64::MAX), "task:9223372036854775807:version");
    }

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

    fn created(id: i64) -> Created {
        Created {
            task: task(id),
            replayed: false,
        }
    }

    fn key(k: &str) -> IdempotencyKey {
        IdempotencyKey::new(k).unwrap_or_else(|_| unreachable!())
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

    /// Renders titles and versions, so that a page with an updated row renders differently.
    fn render_rows(_q: &ListQuery, page: &Page) -> Bytes {
        let rows: Vec<String> = page
            .tasks
            .iter()
            .map(|t| format!("{}@{}", t.title.as_str(), t.version.get()))
            .collect();
        Bytes::from(rows.join(","))
    }

    fn updated(id: i64, version: i64, title: &str) -> Task {
        Task {
            title: Title::new(title).unwrap_or_else(|_| unreachable!()),
            version: Version::new(version),
            ..task(id)
        }
    }

    /// A service writing updates through, whose cache missed the default list under generation
    /// 7 once (the store then read tasks 2 and 1) and takes whatever is stored.
    fn writing_through(mut cache: MockTaskCache) -> TaskService {
        let mut repo = MockTaskRepository::new();
        repo.expect_list()
            .returning(|q| Ok(Page::from_rows(vec![task(2), task(1)], q.limit)));
        repo.expect_update()
            .returning(|id, _, _| Ok(updated(id.get(), 2, "new")));
        repo.expect_create().returning(|_, _| Ok(created(3)));
        cache
            .expect_lookup()
            .returning(|_, _| Ok(CacheLookup::Miss(Some(Generation(7)))));
        cache.expect_store().returning(|_, _, _, _| Ok(()));
        service(repo, cache).with_list_renderer(Arc::new(render_rows))
    }

    async fn read_default_list(svc: &TaskService) {
        let q = ListQuery::default();
        let body = svc.list_rendered(&q, |p| render_rows(&q, p)).await;
        assert_eq!(body.ok(), Some(Bytes::from_static(b"t2@1,t1@1")));
    }

    async fn update(svc: &TaskService, id: i64) {
        let id = TaskId::new(id).unwrap_or_else(|| unreachable!());
        let r = svc
            .update(id, TaskPatch::default(), Precondition::None)
            .await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn an_update_writes_itself_through_into_a_page_read_from_the_store() {
        let mut cache = MockTaskCache::new();
        cache.expect_bump_generation().never();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        cache
            .expect_bump_generation_replacing()
            .times(2)
            .returning(move |r, _| {
                lock(&log).extend(r.iter().cloned());
                Ok(vec![true; r.len()])
            });
        let svc = writing_through(cache);
        read_default_list(&svc).await;

        update(&svc, 1).await;
        update(&svc, 2).await;

        let key = ListQuery::default().cache_key();
        let seen = lock(&seen).clone();
        assert_eq!(
            seen,
            vec![
                Replacement {
                    key: key.clone(),
                    expected_generation: Generation(7),
                    expected_value: Bytes::from_static(b"t2@1,t1@1"),
                    value: Bytes::from_static(b"t2@1,new@2"),
                },
                Replacement {
                    key,
                    expected_generation: Generation(8),
                    expected_value: Bytes::from_static(b"t2@1,new@2"),
                    value: Bytes::from_static(b"new@2,new@2"),
                },
            ]
        );
        assert_eq!(svc.cache_stats().replaced.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_refused_replacement_leaves_the_next_update_a_plain_bump() {
        let mut cache = MockTaskCache::new();
        cache
            .expect_bump_generation_replacing()
            .times(1)
            .returning(|r, _| Ok(vec![false; r.len()]));
        cache
            .expect_bump_generation()
            .times(1)
            .returning(|_| Ok(()));
        let svc = writing_through(cache);
        read_default_list(&svc).await;

        update(&svc, 1).await;
        update(&svc, 1).await;

        assert_eq!(svc.cache_stats().replaced.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_create_is_a_plain_bump_and_leaves_nothing_to_write_through() {
        let mut cache = MockTaskCache::new();
        cache.expect_bump_generation_replacing().never();
        cache
            .expect_bump_generation()
            .times(2)
            .returning(|_| Ok(()));
        let svc = writing_through(cache);
        read_default_list(&svc).await;

        assert!(svc.create(new_task(), None).await.is_ok());
        update(&svc, 1).await;
    }

    #[tokio::test]
    async fn a_filtered_page_is_not_written_through() {
        let mut cache = MockTaskCache::new();
        cache.expect_bump_generation_replacing().never();
        cache
            .expect_bump_generation()
            .times(1)
            .returning(|_| Ok(()));
        let svc = writing_through(cache);
        let q = ListQuery {
            status: Some(Status::Todo),
            ..Default::default()
        };
        assert!(svc.list_rendered(&q, |p| render_rows(&q, p)).await.is_ok());

        update(&svc, 1).await;
    }

    #[tokio::test]
    async fn a_failed_replacing_bump_is_owed_and_stops_writing_through() {
        let mut cache = MockTaskCache::new();
        cache
            .expect_bump_generation_replacing()
            .times(1)
            .returning(|_, _| Err(unavailable()));
        // The next update finds a debt: a plain bump, not a replacement built on a page that
        // may lack the write whose bump failed. Made, it pays the debt too: the next lookup
        // needs no bump of its own.
        cache
            .expect_bump_generation()
            .times(1)
            .returning(|_| Ok(()));
        cache.expect_pay_owed_bump().never();
        let svc = writing_through(cache);
        read_default_list(&svc).await;

        update(&svc, 1).await;
        update(&svc, 1).await;
        read_default_list(&svc).await;

        assert_eq!(svc.cache_stats().errors.load(Ordering::Relaxed), 1);
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

    fn id(raw: i64) -> TaskId {
        TaskId::new(raw).unwrap_or_else(|| unreachable!())
    }

    /// A task at `version`, as the store would return it.
    fn task_at(raw_id: i64, version: i64) -> Task {
        Task {
            version: Version::new(version),
            ..task(raw_id)
        }
    }

    /// The version of the task a revalidation read from the store, if it did.
    fn read_from_store(found: Result<Revalidated, ServiceError>) -> Option<i64> {
        match found {
            Ok(Revalidated::Current(task)) => Some(task.version.get()),
            _ => None,
        }
    }

    fn cached_version(version: i64) -> CacheLookup {
        CacheLookup::Hit(Bytes::copy_from_slice(&version.to_be_bytes()))
    }

    #[tokio::test]
    async fn a_revalidation_of_a_cached_version_the_caller_has_skips_the_store() {
        let mut repo = MockTaskRepository::new();
        repo.expect_get().never();
        let mut cache = MockTaskCache::new();
        cache
            .expect_lookup()
            .withf(|key, _| key == "task:7:version")
            .times(1)
            .returning(|_, _| Ok(cached_version(3)));
        cache.expect_store().never();
        let svc = service(repo, cache);

        let found = svc.get_unless(id(7), |v| v == Version::new(3)).await;

        assert_eq!(found.ok(), Some(Revalidated::Unchanged(Version::new(3))));
        assert_eq!(
            svc.cache_stats().revalidation_hits.load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_revalidation_that_misses_reads_the_store_and_stores_the_version_read() {
        let mut repo = MockTaskRepository::new();
        repo.expect_get()
            .with(eq(id(7)))
            .times(1)
            .returning(|_| Ok(task_at(7, 4)));
        let mut cache = MockTaskCache::new();
        cache
            .expect_lookup()
            .returning(|_, _| Ok(CacheLookup::Miss(Some(Generation(9)))));
        cache
            .expect_store()
            .withf(|key, generation, value, _| {
                key == "task:7:version"
                    && *generation == Generation(9)
                    && value.as_ref() == 4i64.to_be_bytes()
            })
            .times(1)
            .returning(|_, _, _, _| Ok(()));
        let svc = service(repo, cache);

        let found = svc.get_unless(id(7), |_| true).await;

        assert_eq!(read_from_store(found), Some(4));
        assert_eq!(
            svc.cache_stats()
                .revalidation_misses
                .load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_cached_version_the_caller_lacks_is_read_from_the_store_and_left_alone() {
        let mut repo = MockTaskRepository::new();
        repo.expect_get().times(1).returning(|_| Ok(task_at(7, 3)));
        let mut cache = MockTaskCache::new();
        cache
            .expect_lookup()
            .returning(|_, _| Ok(cached_version(3)));
        cache.expect_store().never();
        let svc = service(repo, cache);

        let found = svc.get_unless(id(7), |v| v == Version::new(2)).await;

        assert_eq!(read_from_store(found), Some(3));
    }

    #[tokio::test]
    async fn an_unreadable_cached_version_is_not_trusted() {
        let unreadable: [&[u8]; 3] = [b"\x00\x00\x00\x03", &0i64.to_be_bytes(), b"not a version"];
        for raw in unreadable {
            let mut repo = MockTaskRepository::new();
            repo.expect_get().times(1).returning(|_| Ok(task_at(7, 3)));
            let mut cache = MockTaskCache::new();
            let bytes = Bytes::copy_from_slice(raw);
            cache
                .expect_lookup()
                .returning(move |_, _| Ok(CacheLookup::Hit(bytes.clone())));
            cache.expect_store().never();
            let svc = service(repo, cache);

            // The caller would accept any version: only the store can say which one it is.
            let found = svc.get_unless(id(7), |_| true).await;

            assert_eq!(read_from_store(found), Some(3));
        }
    }

    #[tokio::test]
    async fn a_revalidation_of_a_missing_task_is_not_found_and_stores_nothing() {
        let mut repo = MockTaskRepository::new();
        repo.expect_get()
            .times(1)
            .returning(|_| Err(RepoError::NotFound));
        let mut cache = MockTaskCache::new();
        cache
            .expect_lookup()
            .returning(|_, _| Ok(CacheLookup::Miss(Some(Generation(9)))));
        cache.expect_store().never();
        let svc = service(repo, cache);

        let found = svc.get_unless(id(7), |_| true).await;

        assert!(matches!(found, Err(ServiceError::NotFound)));
    }

    #[tokio::test]
    async fn a_revalidation_pays_an_owed_bump_first_and_reads_the_store_if_it_cannot() {
        let mut repo = MockTaskRepository::new();
        repo.expect_update().returning(|_, _, _| Ok(task_at(7, 2)));
        repo.expect_get().times(1).returning(|_| Ok(task_at(7, 2)));
        let mut cache = MockTaskCache::new();
        // The update's bump fails, and so does paying it: the cache is not looked at.
        cache
            .expect_bump_generation()
            .times(1)
            .returning(|_| Err(unavailable()));
        cache
            .expect_pay_owed_bump()
            .times(1)
            .returning(|_| Err(unavailable()));
        cache.expect_lookup().never();
        cache.expect_store().never();
        let svc = service(repo, cache);
        assert!(svc
            .update(id(7), TaskPatch::default(), Precondition::None)
            .await
            .is_ok());

        // A version cached before the update could be the one the caller has.
        let found = svc.get_unless(id(7), |v| v == Version::new(1)).await;

        assert_eq!(read_from_store(found), Some(2));
    }

    #[tokio::test]
    async fn a_revalidation_with_a_failing_cache_reads_the_store_and_stores_nothing() {
        let mut repo = MockTaskRepository::new();
        repo.expect_get().times(1).returning(|_| Ok(task_at(7, 1)));
        let mut cache = MockTaskCache::new();
        cache.expect_lookup().returning(|_, _| Err(unavailable()));
        cache.expect_store().never();
        let svc = service(repo, cache);

        let found = svc.get_unless(id(7), |_| true).await;

        assert_eq!(read_from_store(found), Some(1));
        assert_eq!(svc.cache_stats().errors.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn every_write_bumps_the_generation_before_returning() {
        let mut repo = MockTaskRepository::new();
        repo.expect_create()
            .times(1)
            .returning(|_, _| Ok(created(1)));
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

        assert!(svc.create(new_task(), None).await.is_ok());
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
        repo.expect_create().returning(|_, _| Ok(created(1)));
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
        // The next read still cannot pay (on a reader's time, which an open breaker may refuse
        // at once): it must not use the cache at all.
        cache
            .expect_pay_owed_bump()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(unavailable()));
        // Redis is back: the debt is paid first, then the lookup happens.
        cache
            .expect_pay_owed_bump()
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
            svc.create(new_task(), None).await.is_ok(),
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

    #[tokio::test]
    async fn an_idempotent_create_hands_the_store_the_key_and_the_request_fingerprint() {
        let mut repo = MockTaskRepository::new();
        let expected = Idempotency::for_create(key("k-1"), &new_task());
        repo.expect_create()
            .withf(move |new, idempotency| {
                *new == new_task() && idempotency.as_ref() == Some(&expected)
            })
            .times(1)
            .returning(|_, _| Ok(created(1)));
        let svc = TaskService::new(Arc::new(repo), None, Duration::from_millis(100));

        let made = svc.create(new_task(), Some(key("k-1"))).await;

        assert_eq!(
            made.ok().map(|c| (c.task.id.get(), c.replayed)),
            Some((1, false))
        );
        assert_eq!(IDEMPOTENCY_KEY_TTL, TimeDelta::hours(24));
    }

    #[tokio::test]
    async fn a_replay_or_a_refused_key_does_not_bump_the_generation() {
        let mut repo = MockTaskRepository::new();
        let mut seq = mockall::Sequence::new();
        repo.expect_create()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| {
                Ok(Created {
                    task: task(1),
                    replayed: true,
                })
            });
        repo.expect_create()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Err(RepoError::IdempotencyKeyReused));
        repo.expect_create()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Err(RepoError::IdempotencyKeyInFlight));
        let mut cache = MockTaskCache::new();
        cache.expect_bump_generation().never();
        let svc = service(repo, cache);

        let replay = svc.create(new_task(), Some(key("k"))).await;
        assert_eq!(replay.ok().map(|c| c.replayed), Some(true));
        assert!(matches!(
            svc.create(new_task(), Some(key("k"))).await,
            Err(ServiceError::IdempotencyKeyReused)
        ));
        assert!(matches!(
            svc.create(new_task(), Some(key("k"))).await,
            Err(ServiceError::IdempotencyKeyInFlight)
        ));
    }

    #[tokio::test]
    async fn a_failed_create_frees_its_key() {
        let mut repo = MockTaskRepository::new();
        let mut seq = mockall::Sequence::new();
        repo.expect_create()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Err(RepoError::Unavailable("down".into())));
        repo.expect_create()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(created(1)));
        let svc = TaskService::new(Arc::new(repo), None, Duration::from_millis(100));

        assert!(matches!(
            svc.create(new_task(), Some(key("k"))).await,
            Err(ServiceError::Unavailable(_))
        ));
        assert!(svc.create(new_task(), Some(key("k"))).await.is_ok());
    }

    /// A cache whose bumps wait until the test hands out a permit, and which records what each
    /// bump replaced; lookups miss under generation 7.
    struct GatedCache {
        gate: Semaphore,
        bumps: Mutex<Vec<Vec<Replacement>>>,
    }

    impl GatedCache {
        async fn until_bumps(&self, n: usize) {
            let start = Instant::now();
            while lock(&self.bumps).len() < n {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "no bump {n} in 5 s"
                );
                tokio::task::yield_now().await;
            }
        }
    }

    #[async_trait]
    impl TaskCache for GatedCache {
        async fn lookup(&self, _key: &str, _deadline: Instant) -> Result<CacheLookup, CacheError> {
            Ok(CacheLookup::Miss(Some(Generation(7))))
        }
        async fn store(
            &self,
            _key: &str,
            _generation: Generation,
            _value: Bytes,
            _deadline: Instant,
        ) -> Result<(), CacheError> {
            Ok(())
        }
        async fn bump_generation(&self, deadline: Instant) -> Result<(), CacheError> {
            self.bump_generation_replacing(&[], deadline).await?;
            Ok(())
        }
        async fn bump_generation_replacing(
            &self,
            replacements: &[Replacement],
            _deadline: Instant,
        ) -> Result<Vec<bool>, CacheError> {
            lock(&self.bumps).push(replacements.to_vec());
            self.gate
                .acquire()
                .await
                .map_err(|e| CacheError::Unexpected(Box::new(e)))?
                .forget();
            Ok(vec![true; replacements.len()])
        }
        async fn ping(&self, _deadline: Instant) -> Result<(), CacheError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn updates_that_finish_during_a_bump_share_the_next_one_and_wait_for_it() {
        let versions = Arc::new(AtomicU64::new(1));
        let mut repo = MockTaskRepository::new();
        repo.expect_list()
            .returning(|q| Ok(Page::from_rows(vec![task(2), task(1)], q.limit)));
        repo.expect_update().returning({
            let versions = Arc::clone(&versions);
            move |id, _, _| {
                let v = versions.fetch_add(1, Ordering::SeqCst) as i64 + 1;
                Ok(updated(id.get(), v, &format!("u{v}")))
            }
        });
        let cache = Arc::new(GatedCache {
            gate: Semaphore::new(0),
            bumps: Mutex::new(Vec::new()),
        });
        let svc = Arc::new(
            TaskService::new(
                Arc::new(repo),
                Some(Arc::clone(&cache) as Arc<dyn TaskCache>),
                Duration::from_millis(100),
            )
            .with_list_renderer(Arc::new(render_rows)),
        );
        read_default_list(&svc).await;
        let spawn_update = |id: i64| {
            let svc = Arc::clone(&svc);
            tokio::spawn(async move { update(&svc, id).await })
        };

        // The first update's bump is on its way (held at the gate)...
        let first = spawn_update(1);
        cache.until_bumps(1).await;
        // ...while two more updates finish: they wait, and send nothing yet.
        let second = spawn_update(2);
        let third = spawn_update(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(lock(&cache.bumps).len(), 1);
        assert!(!second.is_finished() && !third.is_finished());

        // The first bump is made: its update returns, and the two share the next bump, which
        // writes both through into the page the first one made.
        cache.gate.add_permits(1);
        first.await.unwrap_or_else(|_| unreachable!());
        cache.until_bumps(2).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished() && !third.is_finished());
        cache.gate.add_permits(1);
        second.await.unwrap_or_else(|_| unreachable!());
        third.await.unwrap_or_else(|_| unreachable!());

        let bumps = lock(&cache.bumps).clone();
        assert_eq!(bumps.len(), 2, "{bumps:?}");
        assert_eq!(bumps[0][0].expected_generation, Generation(7));
        assert_eq!(bumps[0][0].value, Bytes::from_static(b"t2@1,u2@2"));
        assert_eq!(bumps[1][0].expected_generation, Generation(8));
        assert_eq!(bumps[1][0].expected_value, bumps[0][0].value);
        // Task 2's update and task 1's newer one, whichever order they reached the store in.
        let second_page = std::str::from_utf8(&bumps[1][0].value).unwrap_or_default();
        assert!(
            second_page == "u3@3,u4@4" || second_page == "u4@4,u3@3",
            "{second_page}"
        );
        assert_eq!(svc.cache_stats().shared_bumps.load(Ordering::Relaxed), 1);
        assert_eq!(svc.cache_stats().replaced.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_write_whose_bump_leader_goes_away_sends_its_own_bump() {
        let mut repo = MockTaskRepository::new();
        repo.expect_update()
            .returning(|id, _, _| Ok(updated(id.get(), 2, "new")));
        let cache = Arc::new(GatedCache {
            gate: Semaphore::new(0),
            bumps: Mutex::new(Vec::new()),
        });
        let svc = Arc::new(TaskService::new(
            Arc::new(repo),
            Some(Arc::clone(&cache) as Arc<dyn TaskCache>),
            Duration::from_millis(100),
        ));
        let spawn_update = |id: i64| {
            let svc = Arc::clone(&svc);
            tokio::spawn(async move { update(&svc, id).await })
        };
        // A bump on its way; two writes finish meanwhile, the first of them to lead the next.
        let first = spawn_update(1);
        cache.until_bumps(1).await;
        let leader = spawn_update(2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let member = spawn_update(3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        cache.gate.add_permits(1);
        first.await.unwrap_or_else(|_| unreachable!());
        // The group's bump is on its way when its leader's client goes away: the other write
        // must not be acknowledged on a bump nobody will finish, so it sends its own.
        cache.until_bumps(2).await;
        leader.abort();
        cache.until_bumps(3).await;
        assert!(!member.is_finished());
        cache.gate.add_permits(1);
        member.await.unwrap_or_else(|_| unreachable!());
        assert_eq!(lock(&cache.bumps).len(), 3);
    }

    /// A store whose creates and lists wait until the test hands out a permit.
    struct GatedRepo {
        gate: Semaphore,
        entered: AtomicUsize,
    }

    impl GatedRepo {
        fn new() -> Self {
            Self {
                gate: Semaphore::new(0),
                entered: AtomicUsize::new(0),
            }
        }

        async fn until_entered(&self, n: usize) {
            while self.entered.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        }
    }

    fn not_used() -> RepoError {
        RepoError::Unexpected("not used by this test".into())
    }

    #[async_trait]
    impl TaskRepository for GatedRepo {
        async fn create(
            &self,
            _new: NewTask,
            _idempotency: Option<Idempotency>,
        ) -> Result<Created, RepoError> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let permit = self.gate.acquire().await;
            permit
                .map_err(|e| RepoError::Unexpected(Box::new(e)))?
                .forget();
            Ok(created(1))
        }
        async fn get(&self, _id: TaskId) -> Result<Task, RepoError> {
            Err(not_used())
        }
        /// Waits for a permit, like `create`, then answers one task.
        async fn list(&self, query: &ListQuery) -> Result<Page, RepoError> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let permit = self.gate.acquire().await;
            permit
                .map_err(|e| RepoError::Unexpected(Box::new(e)))?
                .forget();
            Ok(Page::from_rows(vec![task(1)], query.limit))
        }
        async fn update(
            &self,
            _id: TaskId,
            _patch: TaskPatch,
            _precondition: Precondition,
        ) -> Result<Task, RepoError> {
            Err(not_used())
        }
        async fn delete(&self, _id: TaskId, _precondition: Precondition) -> Result<(), RepoError> {
            Err(not_used())
        }
        async fn counts(&self) -> Result<StatusCounts, RepoError> {
            Err(not_used())
        }
        async fn purge_idempotency_keys(&self, _older_than: TimeDelta) -> Result<u64, RepoError> {
            Err(not_used())
        }
        async fn ping(&self) -> Result<(), RepoError> {
            Err(not_used())
        }
    }

    #[tokio::test]
    async fn a_duplicate_of_a_running_create_is_refused_at_once_until_the_first_ends() {
        let repo = Arc::new(GatedRepo::new());
        let svc = Arc::new(TaskService::new(
            Arc::clone(&repo) as Arc<dyn TaskRepository>,
            None,
            Duration::from_millis(100),
        ));
        let spawn_create = |k: &str| {
            let svc = Arc::clone(&svc);
            let k = key(k);
            tokio::spawn(async move { svc.create(new_task(), Some(k)).await })
        };

        let first = spawn_create("k");
        repo.until_entered(1).await;
        assert!(matches!(
            svc.create(new_task(), Some(key("k"))).await,
            Err(ServiceError::IdempotencyKeyInFlight)
        ));
        assert_eq!(
            repo.entered.load(Ordering::SeqCst),
            1,
            "the duplicate was refused without asking the store"
        );
        // Another key is not held up by this one.
        let other = spawn_create("other");
        repo.until_entered(2).await;

        repo.gate.add_permits(2);
        assert!(matches!(first.await, Ok(Ok(_))));
        assert!(matches!(other.await, Ok(Ok(_))));

        // The key is free again once the first create has ended.
        repo.gate.add_permits(1);
        assert!(svc.create(new_task(), Some(key("k"))).await.is_ok());
    }

    #[tokio::test]
    async fn a_cancelled_create_frees_its_key() {
        let repo = Arc::new(GatedRepo::new());
        let svc = Arc::new(TaskService::new(
            Arc::clone(&repo) as Arc<dyn TaskRepository>,
            None,
            Duration::from_millis(100),
        ));
        let abandoned = {
            let svc = Arc::clone(&svc);
            tokio::spawn(async move { svc.create(new_task(), Some(key("k"))).await })
        };
        repo.until_entered(1).await;
        // The client went away: actix drops the handler's future.
        abandoned.abort();
        assert!(abandoned.await.is_err_and(|e| e.is_cancelled()));

        repo.gate.add_permits(1);
        assert!(svc.create(new_task(), Some(key("k"))).await.is_ok());
    }

    /// A service on the gated store and a cache whose lookups all miss under the generations
    /// `generations` hands out; counts the lookups.
    fn gated_cached_service(
        repo: &Arc<GatedRepo>,
        generations: impl Fn(usize) -> u64 + Send + 'static,
        stores: usize,
    ) -> (Arc<TaskService>, Arc<AtomicUsize>) {
        let lookups = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&lookups);
        let mut cache = MockTaskCache::new();
        cache.expect_lookup().returning(move |_, _| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            Ok(CacheLookup::Miss(Some(Generation(generations(n)))))
        });
        cache
            .expect_store()
            .times(stores)
            .returning(|_, _, _, _| Ok(()));
        let svc = TaskService::new(
            Arc::clone(repo) as Arc<dyn TaskRepository>,
            Some(Arc::new(cache)),
            Duration::from_secs(5),
        );
        (Arc::new(svc), lookups)
    }

    fn spawn_list(svc: &Arc<TaskService>) -> tokio::task::JoinHandle<Result<Bytes, ServiceError>> {
        let svc = Arc::clone(svc);
        tokio::spawn(async move { svc.list_rendered(&ListQuery::default(), render).await })
    }

    /// In this single-threaded runtime a reader runs from its lookup to the point where it waits
    /// (for the store, or for another reader's read) without yielding, so once `n` lookups are
    /// counted, `n` readers have each either started a store read or joined one.
    async fn until_looked_up(lookups: &AtomicUsize, n: usize) {
        while lookups.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn concurrent_misses_of_one_entry_under_one_generation_read_the_store_once() {
        const READERS: usize = 200;
        let repo = Arc::new(GatedRepo::new());
        let (svc, lookups) = gated_cached_service(&repo, |_| 7, 1);

        let readers: Vec<_> = (0..READERS).map(|_| spawn_list(&svc)).collect();
        until_looked_up(&lookups, READERS).await;
        repo.until_entered(1).await;
        // Enough permits for every reader: a second store read would not block, it would show.
        repo.gate.add_permits(READERS);

        for reader in readers {
            assert_eq!(
                reader.await.ok().and_then(Result::ok),
                Some(Bytes::from_static(b"1 tasks"))
            );
        }
        assert_eq!(
            repo.entered.load(Ordering::SeqCst),
            1,
            "200 readers of a just-invalidated list cause one store read"
        );
        assert_eq!(svc.cache_stats().misses.load(Ordering::Relaxed), 200);
    }

    #[tokio::test]
    async fn a_reader_that_saw_a_newer_generation_does_not_wait_for_an_older_read() {
        let repo = Arc::new(GatedRepo::new());
        // The first reader looks up before a write's bump, the second after it.
        let (svc, lookups) = gated_cached_service(&repo, |n| 7 + n as u64, 2);

        let before_write = spawn_list(&svc);
        repo.until_entered(1).await;
        let after_write = spawn_list(&svc);
        until_looked_up(&lookups, 2).await;

        // The second reader reads the store itself: a read that began before the write may
        // not have seen it.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), repo.until_entered(2))
                .await
                .is_ok(),
            "the reader that saw the newer generation waited for the older read"
        );
        repo.gate.add_permits(2);
        assert!(matches!(before_write.await, Ok(Ok(_))));
        assert!(matches!(after_write.await, Ok(Ok(_))));
    }

    #[tokio::test]
    async fn when_the_leading_reader_goes_away_its_followers_read_the_store_themselves() {
        let repo = Arc::new(GatedRepo::new());
        let (svc, lookups) = gated_cached_service(&repo, |_| 7, 1);

        let leader = spawn_list(&svc);
        repo.until_entered(1).await;
        let follower = spawn_list(&svc);
        until_looked_up(&lookups, 2).await;
        assert_eq!(
            repo.entered.load(Ordering::SeqCst),
            1,
            "the second reader waits"
        );

        // The leader's client went away: actix drops the handler's future.
        leader.abort();
        assert!(leader.await.is_err_and(|e| e.is_cancelled()));
        assert!(
            tokio::time::timeout(Duration::from_secs(5), repo.until_entered(2))
                .await
                .is_ok(),
            "the follower did not go to the store itself"
        );
        repo.gate.add_permits(1);
        assert_eq!(
            follower.await.ok().and_then(Result::ok),
            Some(Bytes::from_static(b"1 tasks"))
        );
    }

    #[tokio::test]
    async fn a_reader_that_misses_just_after_a_read_under_its_generation_ended_takes_its_bytes() {
        let repo = Arc::new(GatedRepo::new());
        // Both lookups miss under generation 7: the second was sent before the first reader's
        // entry reached the cache. One store read and one store of the entry (the mock's
        // count), not two.
        let (svc, _) = gated_cached_service(&repo, |_| 7, 1);
        repo.gate.add_permits(2);
        let first = svc.list_rendered(&ListQuery::default(), render).await;
        let late = svc.list_rendered(&ListQuery::default(), render).await;
        assert_eq!(first.ok(), Some(Bytes::from_static(b"1 tasks")));
        assert_eq!(late.ok(), Some(Bytes::from_static(b"1 tasks")));
        assert_eq!(repo.entered.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_reader_that_misses_under_a_newer_generation_reads_the_store_again() {
        let repo = Arc::new(GatedRepo::new());
        // A write's bump between the two lookups.
        let (svc, _) = gated_cached_service(&repo, |n| 7 + n as u64, 2);
        repo.gate.add_permits(2);
        assert!(svc
            .list_rendered(&ListQuery::default(), render)
            .await
            .is_ok());
        assert!(svc
            .list_rendered(&ListQuery::default(), render)
            .await
            .is_ok());
        assert_eq!(repo.entered.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_finished_read_serves_its_generation_and_key_only_for_a_while() {
        let (now, page) = (Instant::now(), Bytes::from_static(b"page"));
        let key = |k: &str, g: u64| (k.to_owned(), Generation(g));
        let mut recent = Recent::default();
        recent.put(&key("a", 7), &page, now);
        assert_eq!(recent.get(&key("a", 7), now), Some(page.clone()));
        assert_eq!(recent.get(&key("a", 8), now), None);
        assert_eq!(recent.get(&key("b", 7), now), None);
        assert_eq!(recent.get(&key("a", 7), now + RECENT_FOR), None);

        // An older generation's read is not kept; a newer one's replaces everything.
        recent.put(&key("b", 6), &page, now);
        assert_eq!(recent.get(&key("b", 6), now), None);
        recent.put(&key("b", 8), &page, now);
        assert_eq!(recent.get(&key("b", 8), now), Some(page.clone()));
        assert_eq!(recent.get(&key("a", 7), now), None);
        assert_eq!(recent.bytes, page.len());

        // Bounded in bytes.
        let big = Bytes::from(vec![b'x'; RECENT_BYTES]);
        recent.put(&key("c", 8), &big, now);
        assert_eq!(recent.get(&key("c", 8), now), None);
        recent.put(&key("b", 8), &Bytes::from_static(b"longer page"), now);
        assert_eq!(recent.bytes, "longer page".len());
    }
}
