//! One multiplexed Redis connection per thread, shared by every call made on that thread,
//! replaced when it breaks.
//!
//! deadpool-redis creates the connections, but the hot path never checks one out: each checkout
//! of a pooled connection recycles it first (`UNWATCH` and `PING`, one more round trip). In the
//! probe recorded in the performance issue, a checkout per request served the cached list at
//! about 0.25x nginx, one shared connection at 0.6-0.75x. A `MultiplexedConnection` already
//! pipelines concurrent requests over one socket, so one is taken out of the pool for good and
//! cloned per call (clones share the socket).
//!
//! Per thread, because a `MultiplexedConnection` is driven by a task on the runtime that made
//! it: with one connection for the whole process, every call from the other actix worker
//! crossed threads twice (request in, answer back) and one worker did the Redis I/O of both.
//! One per worker keeps each call on its thread: the cached 3-row list went from 66.7k / 68.2k /
//! 71.1k to 75.4k / 75.6k / 77.4k requests/s (CPU 15.5-16.2 -> 14.2-14.9 us per request). The
//! cost is one Redis connection per worker thread (per core, by default) instead of one per
//! process; a thread that ends leaves its connection here until it breaks or the cache is
//! dropped (actix workers live as long as the server).
//!
//! Besides, one connection for the whole process, the *ordered* one, for the bumps that write
//! updates through (docs/ARCHITECTURE.md, "Write-through of updates"): each builds on the page
//! the one before it stored, so they must reach Redis in the order they were made, and two
//! threads' connections are two sockets that Redis reads in either order. On per-thread
//! connections, about one such bump in five was refused in the benchmark's mix (and its page then
//! missed); on the ordered one, about one in thirty. Reads never use it.

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::{Connection, Pool, PoolError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::thread::ThreadId;

/// A clone of the shared connection, and which one it is.
pub(crate) struct Lease {
    /// Tells this connection from its successors, so that a late failure on an old connection
    /// never discards a new one.
    pub(crate) id: u64,
    pub(crate) conn: MultiplexedConnection,
    /// Whether this call made the connection (then a failure on it is not a stale socket).
    pub(crate) fresh: bool,
}

struct Current {
    /// The thread that made it: each runtime thread (each actix worker) gets its own.
    thread: ThreadId,
    id: u64,
    conn: MultiplexedConnection,
}

impl Current {
    fn lease(&self) -> Lease {
        Lease {
            id: self.id,
            conn: self.conn.clone(),
            fresh: false,
        }
    }
}

/// The shared connection, or none after a failure until the next call makes one.
pub(crate) struct SharedConnection {
    pool: Pool,
    current: RwLock<Vec<Current>>,
    /// One connection for the process, whatever the thread: for the calls whose order across
    /// threads matters ([`SharedConnection::get_ordered`]).
    ordered: RwLock<Option<Current>>,
    /// Held while connecting, so that a hundred calls arriving when the connection is gone make
    /// one new connection, not a hundred: the others wait (within their deadlines) and use it.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

impl SharedConnection {
    pub(crate) fn new(pool: Pool) -> Self {
        Self {
            pool,
            current: RwLock::new(Vec::new()),
            ordered: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
        }
    }

    /// The lock only guards a swap of a value that cannot be left half-written, so a panic
    /// elsewhere while holding it (there is none) would not make its content unusable.
    fn current(&self) -> Option<Lease> {
        let guard = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let thread = std::thread::current().id();
        guard
            .iter()
            .find(|c| c.thread == thread)
            .map(Current::lease)
    }

    /// The shared connection, connecting first if there is none.
    ///
    /// # Errors
    /// The pool's error when a new connection cannot be made.
    pub(crate) async fn get(&self) -> Result<Lease, PoolError> {
        self.get_or_connect(
            || self.current(),
            |made| {
                let mut guard = self.current.write().unwrap_or_else(PoisonError::into_inner);
                guard.retain(|c| c.thread != made.thread);
                guard.push(made);
            },
        )
        .await
    }

    /// The process's one ordered connection, connecting first if there is none. Calls made on
    /// it reach Redis in the order they were sent, from any thread (Redis answers one socket's
    /// commands in order); calls on the per-thread connections of two threads may overtake each
    /// other. Its driver runs on the runtime of the thread that made it, so a call from another
    /// thread crosses threads: for the few calls whose order matters.
    ///
    /// # Errors
    /// The pool's error when a new connection cannot be made.
    pub(crate) async fn get_ordered(&self) -> Result<Lease, PoolError> {
        let current = || {
            let guard = self.ordered.read().unwrap_or_else(PoisonError::into_inner);
            guard.as_ref().map(Current::lease)
        };
        self.get_or_connect(current, |made| {
            *self.ordered.write().unwrap_or_else(PoisonError::into_inner) = Some(made);
        })
        .await
    }

    /// `current()`'s lease, or a new connection handed to `keep` (one connection made at a time:
    /// whoever waited for the lock first looks again).
    async fn get_or_connect(
        &self,
        current: impl Fn() -> Option<Lease>,
        keep: impl FnOnce(Current),
    ) -> Result<Lease, PoolError> {
        if let Some(lease) = current() {
            return Ok(lease);
        }
        let _connecting = self.connecting.lock().await;
        // Whoever held the lock before may have connected already.
        if let Some(lease) = current() {
            return Ok(lease);
        }
        let conn = Connection::take(self.pool.get().await?);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        keep(Current {
            thread: std::thread::current().id(),
            id,
            conn: conn.clone(),
        });
        tracing::debug!(connection = id, "connected to Redis");
        Ok(Lease {
            id,
            conn,
            fresh: true,
        })
    }

    /// Forgets connection `id` if it is still the shared one, so the next call makes a new one.
    /// In-flight calls on it finish or fail on their own; the socket closes with its last clone.
    pub(crate) fn discard(&self, id: u64) {
        let mut guard = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = guard.iter().position(|c| c.id == id) {
            guard.swap_remove(i);
            tracing::debug!(connection = id, "dropped the shared Redis connection");
        }
        drop(guard);
        let mut ordered = self.ordered.write().unwrap_or_else(PoisonError::into_inner);
        if ordered.as_ref().is_some_and(|c| c.id == id) {
            *ordered = None;
            tracing::debug!(connection = id, "dropped the ordered Redis connection");
        }
    }
}
