//! [`JoinedLists`]: a list read that asks for the same page as one still waiting to start
//! (for a search slot or a connection) joins it, and both get the answer of its one query.
//!
//! Under load, list reads queue in the process before PostgreSQL sees them: searches for one of
//! the few search slots (`search_slots.rs`), any read for a connection when the pool is busy.
//! Readers of a popular page (a dashboard's filter, a common search, 32 clients rotating through
//! ten search texts in `just bench`) then wait in that queue side by side, each to send the same
//! statement. Without joining, each of them costs the database the full read in turn.
//!
//! A read joins only another read of the same [`ListQuery`] that has not sent its statement yet:
//! the shared statement starts after every reader that joined it arrived, so it sees every write
//! acknowledged before any of them began, exactly as its own statement would have (each
//! statement reads a snapshot taken when it starts). Once the statement is on its way the read is
//! closed to newcomers, who start (or join) the next one. The answer is never older than the
//! request: this is not a cache.
//!
//! The read is a shared future: whichever of its readers is polled drives it, so a reader that
//! goes away (its client disconnected) leaves it running for the others; when every reader has
//! gone, it is dropped, its slot and connection freed as for any cancelled read. Its outcome,
//! the page or the error, goes to every reader.

use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tasklane_domain::{ListQuery, Page, RepoError};

use crate::errors;

type Outcome = Result<Arc<Page>, Arc<RepoError>>;
type Read = BoxFuture<'static, Outcome>;

/// The list reads open to joining, by query (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct JoinedLists {
    open: Mutex<HashMap<ListQuery, (u64, WeakShared<Read>)>>,
    next_id: AtomicU64,
    joined: AtomicU64,
}

/// A read's place among the open ones, until it closes: given to the read, which closes it just
/// before sending its statement. Dropped before that (the read failed or was cancelled while
/// waiting), it closes too.
#[derive(Debug)]
pub(crate) struct Opening {
    lists: Arc<JoinedLists>,
    query: Option<ListQuery>,
    id: u64,
}

impl Opening {
    /// No read joins this one from now on.
    pub(crate) fn close(&mut self) {
        let Some(query) = self.query.take() else {
            return;
        };
        let mut open = self.lists.lock();
        if open.get(&query).is_some_and(|(id, _)| *id == self.id) {
            open.remove(&query);
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        self.close();
    }
}

impl JoinedLists {
    /// Answers `query`: by joining the identical read that has not sent its statement yet, if
    /// there is one, or else by running `read`, which others may join until it calls
    /// [`Opening::close`].
    pub(crate) async fn read<F, Fut>(
        self: &Arc<Self>,
        query: &ListQuery,
        read: F,
    ) -> Result<Page, RepoError>
    where
        F: FnOnce(ListQuery, Opening) -> Fut,
        Fut: Future<Output = Result<Page, RepoError>> + Send + 'static,
    {
        let shared = {
            let mut open = self.lock();
            match open.get(query).and_then(|(_, read)| read.upgrade()) {
                Some(shared) => {
                    self.joined.fetch_add(1, Ordering::Relaxed);
                    shared
                }
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let opening = Opening {
                        lists: Arc::clone(self),
                        query: Some(query.clone()),
                        id,
                    };
                    let shared: Shared<Read> = read(query.clone(), opening)
                        .map(|outcome| outcome.map(Arc::new).map_err(Arc::new))
                        .boxed()
                        .shared();
                    if let Some(weak) = shared.downgrade() {
                        open.insert(query.clone(), (id, weak));
                    }
                    shared
                }
            }
        };
        // The last reader to take the outcome takes it whole; the others, copies.
        match shared.await {
            Ok(page) => Ok(Arc::unwrap_or_clone(page)),
            Err(e) => Err(Arc::try_unwrap(e)
                .unwrap_or_else(|e| errors::shared(&e, "a list read shared with others"))),
        }
    }

    /// How many reads joined another instead of sending their own statement, since start.
    pub(crate) fn joined(&self) -> u64 {
        self.joined.load(Ordering::Relaxed)
    }

    /// How many reads are open to joining now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ListQuery, (u64, WeakShared<Read>)>> {
        // The map is consistent after any panic (single inserts and removes).
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use tasklane_domain::{BoxError, Cursor, TaskId};
    use tokio::sync::Semaphore;
    use tokio::task::JoinHandle;

    fn query(text: &str) -> ListQuery {
        ListQuery {
            search: tasklane_domain::SearchText::new(text).unwrap(),
            ..ListQuery::default()
        }
    }

    /// Fake store reads: each counts itself, waits for a `before_send` permit, closes (sends its
    /// "statement"), waits for an `after_send` permit, and answers an empty page whose next
    /// cursor's id is its run's number, or fails if `fail`.
    #[derive(Clone)]
    struct Reads {
        lists: Arc<JoinedLists>,
        runs: Arc<AtomicU64>,
        before_send: Arc<Semaphore>,
        after_send: Arc<Semaphore>,
        fail: bool,
    }

    impl Reads {
        fn new() -> Self {
            Self {
                lists: Arc::default(),
                runs: Arc::default(),
                before_send: Arc::new(Semaphore::new(0)),
                after_send: Arc::new(Semaphore::new(0)),
                fail: false,
            }
        }

        fn runs(&self) -> u64 {
            self.runs.load(Ordering::SeqCst)
        }

        /// Starts a reader of `q`; the answer names the run that served it.
        fn reader(&self, q: ListQuery) -> JoinHandle<Result<u64, RepoError>> {
            let reads = self.clone();
            tokio::spawn(async move {
                let inner = reads.clone();
                let page = reads
                    .lists
                    .read(&q, move |_, mut opening: Opening| async move {
                        let run = inner.runs.fetch_add(1, Ordering::SeqCst) + 1;
                        inner.before_send.acquire().await.unwrap().forget();
                        opening.close();
                        inner.after_send.acquire().await.unwrap().forget();
                        if inner.fail {
                            let cause: BoxError = "the store is down".into();
                            return Err(RepoError::Unavailable(cause));
                        }
                        let id = TaskId::new(i64::try_from(run).unwrap()).unwrap();
                        let next = Some(Cursor {
                            created_at: DateTime::UNIX_EPOCH,
                            id,
                        });
                        Ok(Page {
                            tasks: Vec::new(),
                            next,
                        })
                    })
                    .await?;
                Ok(page.next.map_or(0, |c| c.id.get() as u64))
            })
        }

        async fn until(&self, what: impl Fn(&Self) -> bool) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !what(self) {
                assert!(std::time::Instant::now() < deadline, "waited 5 s");
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test]
    async fn reads_of_one_query_waiting_to_start_share_one_statement() {
        let reads = Reads::new();
        let first = reads.reader(query("budget"));
        reads.until(|r| r.runs() == 1).await;
        let second = reads.reader(query("budget"));
        let third = reads.reader(query("budget"));
        reads.until(|r| r.lists.joined() == 2).await;
        // Another query is another read.
        let other = reads.reader(query("Budget"));
        reads.until(|r| r.runs() == 2).await;

        reads.before_send.add_permits(2);
        reads.after_send.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 1);
        assert_eq!(third.await.unwrap().unwrap(), 1);
        assert_eq!(other.await.unwrap().unwrap(), 2);
        assert_eq!((reads.runs(), reads.lists.joined()), (2, 2));
        assert_eq!(reads.lists.open(), 0);
    }

    #[tokio::test]
    async fn a_read_arriving_once_the_statement_is_sent_sends_its_own() {
        let reads = Reads::new();
        let first = reads.reader(query("budget"));
        reads.before_send.add_permits(1);
        reads.until(|r| r.lists.open() == 0 && r.runs() == 1).await;
        // The first read's statement is on its way: it may predate anything written since.
        let second = reads.reader(query("budget"));
        reads.until(|r| r.runs() == 2).await;
        reads.before_send.add_permits(1);
        reads.after_send.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
        assert_eq!(reads.lists.joined(), 0);
    }

    #[tokio::test]
    async fn a_read_goes_on_for_its_other_readers_when_the_first_goes_away() {
        let reads = Reads::new();
        let first = reads.reader(query("budget"));
        reads.until(|r| r.runs() == 1).await;
        let second = reads.reader(query("budget"));
        reads.until(|r| r.lists.joined() == 1).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());

        reads.before_send.add_permits(1);
        reads.after_send.add_permits(1);
        assert_eq!(second.await.unwrap().unwrap(), 1);
        assert_eq!(reads.runs(), 1);
    }

    #[tokio::test]
    async fn a_read_whose_readers_all_went_away_is_closed() {
        let reads = Reads::new();
        let first = reads.reader(query("budget"));
        reads.until(|r| r.runs() == 1).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert_eq!(reads.lists.open(), 0);

        let second = reads.reader(query("budget"));
        reads.before_send.add_permits(1);
        reads.after_send.add_permits(1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
        assert_eq!(reads.lists.joined(), 0);
    }

    #[tokio::test]
    async fn every_reader_of_a_failed_read_gets_its_error() {
        let mut reads = Reads::new();
        reads.fail = true;
        let first = reads.reader(query("budget"));
        reads.until(|r| r.runs() == 1).await;
        let second = reads.reader(query("budget"));
        reads.until(|r| r.lists.joined() == 1).await;
        reads.before_send.add_permits(1);
        reads.after_send.add_permits(1);
        // A reader gets the error itself when no other holds it any more, else a copy naming it.
        let down = "the store is down";
        let copy = "a list read shared with others failed: the task store is unavailable";
        for reader in [first, second] {
            match reader.await.unwrap() {
                Err(RepoError::Unavailable(why)) => {
                    let cause = std::error::Error::source(&*why).map(ToString::to_string);
                    let (message, cause) = (why.to_string(), cause);
                    assert!(
                        (message == down && cause.is_none())
                            || (message == copy && cause.as_deref() == Some(down)),
                        "{message}: {cause:?}"
                    );
                }
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
        assert_eq!(reads.runs(), 1);
    }
}
