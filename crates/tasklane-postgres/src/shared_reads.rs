//! [`SharedReads`]: point reads made at the same time on one worker thread share one pooled
//! connection, so that tokio-postgres pipelines them (docs/PERFORMANCE.md, section 18).
//!
//! A point read (one task by id) holds a connection for a single round trip, and on a busy
//! server most of that round trip is spent waiting for PostgreSQL's backend, or this worker, to
//! be scheduled on a shared core. With a connection per read, 32 requests in flight over a pool
//! of 8 left 24 waiting for a connection while the 8 connections' backends mostly slept between
//! one query and the next. tokio-postgres's client takes queries from any number of futures at
//! once and writes them to the socket together; the backend then finds the next query already
//! in its buffer and runs them back to back.
//!
//! So the first point read on a thread checks a connection out of the pool as before and
//! starts a [`Lease`] on it; point reads starting on that thread while it lasts (at most
//! [`READERS_MAX`] at a time) send their query on the same connection instead of checking out
//! another. The connection goes back to the pool when the last of them is done. Nothing else
//! shares a connection: writes and transactions need one of their own, and a search would
//! hold up the reads queued behind it.
//!
//! The pool's bounds are unchanged (a lease is one checked-out connection, its permit held), and
//! so is each read's: its query is bounded by the repository's query timeout. A read that times
//! out breaks the lease off: no read joins it any more, and its connection is closed instead of
//! going back to the pool once the reads still on it (each bounded by its own timeout) are done.

use crate::pool::Client;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// The most point reads one connection carries at once. Past it, the next read checks out
/// another connection (and starts the thread's next lease), so that a burst is spread over
/// more than one backend when the pool has them.
pub(crate) const READERS_MAX: usize = 16;

/// Ids for [`SharedReads`], so that the leases of several repositories on one thread (tests
/// build many) stay apart.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's current lease in each repository that started one: `(id, lease)`.
    static CURRENT: RefCell<Vec<(usize, Weak<Lease>)>> = const { RefCell::new(Vec::new()) };
}

/// One repository's shared point reads (see the module's documentation); its clones share its
/// leases.
#[derive(Clone, Debug)]
pub(crate) struct SharedReads {
    id: usize,
}

/// A pooled connection shared by the point reads that hold it.
#[derive(Debug)]
pub(crate) struct Lease {
    /// `Some` until dropped.
    client: Option<Client>,
    broken: AtomicBool,
}

impl SharedReads {
    pub(crate) fn new() -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// This thread's current lease, when it is whole, its connection open and it has room for
    /// one more read.
    pub(crate) fn join(&self) -> Option<Arc<Lease>> {
        CURRENT.with(|current| {
            let current = current.borrow();
            let (_, lease) = current.iter().find(|(id, _)| *id == self.id)?;
            let lease = lease.upgrade()?;
            // The count includes the handle just made.
            (Arc::strong_count(&lease) <= READERS_MAX && lease.joinable()).then_some(lease)
        })
    }

    /// A lease on `client`, which point reads starting later on this thread join while it
    /// lasts (it replaces the thread's current one, which its readers keep until they are done).
    pub(crate) fn start(&self, client: Client) -> Arc<Lease> {
        let lease = Arc::new(Lease {
            client: Some(client),
            broken: AtomicBool::new(false),
        });
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            // Forgets this repository's old lease, and any other repository's that has ended.
            current.retain(|(id, old)| *id != self.id && old.strong_count() > 0);
            current.push((self.id, Arc::downgrade(&lease)));
        });
        lease
    }
}

impl Lease {
    #[allow(
        clippy::expect_used,
        reason = "only `drop` takes the connection out, and nothing uses the lease after that"
    )]
    pub(crate) fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }

    /// No read joins this lease any more, and its connection is closed, not returned to the
    /// pool, when the last read on it is done: a read on it timed out, so a statement may
    /// still be running there.
    pub(crate) fn break_off(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    fn joinable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.client().is_closed()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if *self.broken.get_mut() {
                drop(Client::take(client));
            }
        }
    }
}
