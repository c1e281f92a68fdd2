//! [`Pool`]: the configured connections, split into one shard per HTTP worker thread.
//!
//! tokio-postgres drives each connection from a task on the runtime that opened it, and
//! actix-web runs one single-threaded runtime per worker. With one shared pool, about half of
//! the queries went out on a connection that another worker drives: every such query woke that
//! worker to write it, and woke the caller back with the rows (docs/PERFORMANCE.md, section 10).
//! Here each worker claims a shard when it starts ([`Pool::claim_thread`]) and takes its
//! connections from that shard first. A shard's connections are all opened, and driven, on
//! the runtime of the thread that claimed it, whichever caller needed one ([`HomeConnect`]): a
//! tokio socket stays with the runtime it was opened on.
//!
//! Capacity and waiting are those of one pool of `pool_size`: at most that many connections in
//! all, and a caller waits (in arrival order, at most the wait timeout) only while every one of
//! them is checked out, never while one is free in another shard. One semaphore of `pool_size`
//! permits is the only queue. A caller holding a permit always finds a free connection, or room
//! to open one, in some shard: a connection goes back to its shard before its permit is
//! released, so the connections checked out never outnumber the permits held.

use crate::search_slots::Waiting;
use deadpool_postgres::{ClientWrapper, Connect, Object, PoolError, Timeouts};
use std::cell::RefCell;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

/// Pool ids, so that a thread's claims on several pools (tests build many) stay apart.
static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The shard this thread claimed in each pool it claimed one in: `(pool id, shard)`.
    static CLAIMS: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
}

/// The connection pool: `pool_size` connections at most, in one shard per worker thread.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: usize,
    shards: Box<[deadpool_postgres::Pool]>,
    /// Where each shard's connections are opened and driven.
    homes: Box<[Arc<Home>]>,
    /// One permit per connection the pool may hold; the only place a caller waits.
    gate: Arc<Semaphore>,
    max_size: usize,
    timeouts: Timeouts,
    /// How shards are handed to claiming threads, in turn.
    next_claim: AtomicUsize,
    waiting: AtomicUsize,
}

/// The pool's state, summed over its shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// The most connections the pool may hold.
    pub max_size: usize,
    /// The connections it holds.
    pub size: usize,
    /// The idle ones.
    pub available: usize,
    /// Callers waiting for one.
    pub waiting: usize,
}

impl Pool {
    /// Splits `max_size` connections as evenly as can be between `shards`, each a deadpool pool
    /// built by `build` from its size and the [`HomeConnect`] it must open connections with.
    /// `timeouts.wait` bounds a caller's wait for a connection; `create` and `recycle` apply as
    /// in deadpool.
    pub(crate) fn new<E>(
        max_size: usize,
        shards: usize,
        timeouts: Timeouts,
        mut build: impl FnMut(usize, HomeConnect) -> Result<deadpool_postgres::Pool, E>,
    ) -> Result<Self, E> {
        // A shard of no connections would serve nothing.
        let n = shards.clamp(1, max_size.max(1));
        let homes: Box<[_]> = (0..n).map(|_| Arc::new(Home::default())).collect();
        let shards = homes
            .iter()
            .enumerate()
            .map(|(i, home)| {
                let size = max_size / n + usize::from(i < max_size % n);
                build(size, HomeConnect { home: home.clone() })
            })
            .collect::<Result<Box<[_]>, E>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
                shards,
                homes,
                gate: Arc::new(Semaphore::new(max_size)),
                max_size,
                timeouts,
                next_claim: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
            }),
        })
    }

    /// Makes the next shard, in turn, this thread's own: its connections are taken first by
    /// callers on this thread, and opened (so driven) on this thread's runtime, whoever asks
    /// for one. Called by each HTTP worker, on its runtime, as it starts. Idle connections of
    /// that shard opened before (by start-up, on another thread) are closed, to be reopened
    /// here when needed. A thread that claims nothing (start-up, tests) takes from the shard
    /// with the most idle connections. Outside a tokio runtime, the thread takes its shard's
    /// connections first but cannot be their home.
    pub fn claim_thread(&self) {
        let inner = &self.inner;
        let shard = inner.next_claim.fetch_add(1, Ordering::Relaxed) % inner.shards.len();
        CLAIMS.with(|claims| {
            let mut claims = claims.borrow_mut();
            claims.retain(|(pool, _)| *pool != inner.id);
            claims.push((inner.id, shard));
        });
        inner.homes[shard].set(Handle::try_current().ok());
        inner.shards[shard].retain(|_, _| false);
    }

    /// The shard this thread claimed, if it did.
    fn claimed(&self) -> Option<usize> {
        CLAIMS.with(|claims| {
            claims
                .borrow()
                .iter()
                .find(|(pool, _)| *pool == self.inner.id)
                .map(|(_, shard)| *shard)
        })
    }

    /// A connection: from this thread's shard when it has one free, else from another shard;
    /// waiting, while all are checked out, at most the wait timeout.
    ///
    /// # Errors
    /// `Timeout(Wait)` after the wait, `Closed` once the pool is closed, and deadpool's errors
    /// for opening a connection (`Backend`, `Timeout(Create)`).
    pub async fn get(&self) -> Result<Client, PoolError> {
        let permit = self.acquire().await?;
        let inner = &self.inner;
        let n = inner.shards.len();
        let start = self.claimed().unwrap_or_else(|| self.most_idle());
        // A permit is held, so some shard has room: none of these waits.
        let now = Timeouts {
            wait: Some(Duration::ZERO),
            ..inner.timeouts
        };
        let mut deadline = None;
        loop {
            for k in 0..n {
                let shard = (start + k) % n;
                match inner.shards[shard].timeout_get(&now).await {
                    Ok(object) => {
                        return Ok(Client {
                            object,
                            _permit: permit,
                            shard,
                        })
                    }
                    Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => {}
                    Err(e) => return Err(e),
                }
            }
            // Every shard looked full: a connection was going back to one while another filled
            // up behind this scan. Let the other task finish, then look again; never longer
            // than a caller may wait.
            let wait = inner.timeouts.wait.unwrap_or(Duration::from_secs(1));
            if Instant::now() > *deadline.get_or_insert_with(|| Instant::now() + wait) {
                return Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait));
            }
            tokio::task::yield_now().await;
        }
    }

    /// A permit: at once when one is free and nobody waits, else in arrival order.
    async fn acquire(&self) -> Result<OwnedSemaphorePermit, PoolError> {
        let gate = &self.inner.gate;
        match gate.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(PoolError::Closed),
            Err(TryAcquireError::NoPermits) => {}
        }
        let wait = self.inner.timeouts.wait;
        if wait == Some(Duration::ZERO) {
            return Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait));
        }
        let _waiting = Waiting::enter(&self.inner.waiting);
        let acquire = gate.clone().acquire_owned();
        let permit = match wait {
            Some(wait) => tokio::time::timeout(wait, acquire)
                .await
                .map_err(|_| PoolError::Timeout(deadpool_postgres::TimeoutType::Wait))?,
            None => acquire.await,
        };
        permit.map_err(|_| PoolError::Closed)
    }

    fn most_idle(&self) -> usize {
        let shards = &self.inner.shards;
        (0..shards.len())
            .max_by_key(|&i| shards[i].status().available)
            .unwrap_or(0)
    }

    /// The pool's state, summed over its shards.
    pub fn status(&self) -> PoolStatus {
        let (size, available) = self
            .inner
            .shards
            .iter()
            .map(deadpool_postgres::Pool::status)
            .fold((0, 0), |(size, available), s| {
                (size + s.size, available + s.available)
            });
        PoolStatus {
            max_size: self.inner.max_size,
            size,
            available,
            waiting: self.inner.waiting.load(Ordering::Relaxed),
        }
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// The timeouts the pool was built with.
    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    /// Closes the pool: waiting callers get `Closed`, idle connections close, and connections
    /// checked out close when they come back.
    pub fn close(&self) {
        self.inner.gate.close();
        for shard in &self.inner.shards {
            shard.close();
        }
    }
}

/// A connection checked out of the [`Pool`]; it goes back when dropped.
#[derive(Debug)]
pub struct Client {
    // Dropped in this order: the connection goes back to its shard, then the permit is
    // released (see the module's documentation).
    object: Object,
    _permit: OwnedSemaphorePermit,
    shard: usize,
}

impl Client {
    /// Takes the connection out of the pool for good (to close it, or to keep it): its place in
    /// the pool comes free.
    pub fn take(this: Self) -> ClientWrapper {
        let Self {
            object,
            _permit: permit,
            ..
        } = this;
        let client = Object::take(object);
        drop(permit);
        client
    }

    /// The shard the connection belongs to.
    pub fn shard(&self) -> usize {
        self.shard
    }
}

impl Deref for Client {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.object
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.object
    }
}

/// The runtime a shard's connections are opened and driven on, once a thread claimed it.
#[derive(Debug, Default)]
pub(crate) struct Home(RwLock<Option<Handle>>);

impl Home {
    fn get(&self) -> Option<Handle> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, handle: Option<Handle>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = handle;
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens a shard's connections on its home runtime: the socket, and the task that drives it,
/// belong to the thread that claimed the shard even when a caller on another thread needed
/// the connection. Before any thread claimed the shard, or once its runtime is gone (that
/// worker stopped), a connection is opened on the caller's runtime, as deadpool would.
#[derive(Debug)]
pub(crate) struct HomeConnect {
    home: Arc<Home>,
}

impl Connect for HomeConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>>
    {
        let config = config.clone();
        Box::pin(async move {
            if let Some(home) = self.home.get() {
                let (opened, client) = oneshot::channel();
                let there = config.clone();
                let task = home.spawn(async move {
                    match there.connect(NoTls).await {
                        Ok((client, connection)) => {
                            // When nobody waits for it any more (the create timed out), the
                            // connection is dropped here, which closes it.
                            if opened.send(Ok(client)).is_ok() {
                                drive(connection).await;
                            }
                        }
                        Err(e) => drop(opened.send(Err(e))),
                    }
                });
                match client.await {
                    Ok(Ok(client)) => return Ok((client, task)),
                    Ok(Err(e)) => return Err(e),
                    // The home runtime dropped the task: it has shut down.
                    Err(_) => self.home.set(None),
                }
            }
            let (client, connection) = config.connect(NoTls).await?;
            Ok((client, tokio::spawn(drive(connection))))
        })
    }
}

/// Drives a connection until it closes.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "PostgreSQL connection error");
    }
}
