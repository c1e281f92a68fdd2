//! A fixed set of SQLite connections, each used by one caller at a time, on tokio's blocking
//! threads so that SQLite's blocking calls never stall the async runtime.
//!
//! A caller waits for a free connection asynchronously (a semaphore permit per connection), for
//! at most the busy timeout, then moves the connection onto a blocking thread together with a
//! lease that puts it back when the work is done, even if the work panics or the caller's
//! future is dropped while the work runs.

use crate::errors::{self, Closed, ConnectionWaitTimeout};
use rusqlite::Connection;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tasklane_domain::RepoError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections of one role (the writer, or the readers).
pub(crate) struct Connections {
    role: &'static str,
    size: usize,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection not lent out; closed by [`Connections::close`].
    permits: Arc<Semaphore>,
    wait: Duration,
}

impl Connections {
    pub(crate) fn new(role: &'static str, conns: Vec<Connection>, wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            role,
            size: conns.len(),
            permits: Arc::new(Semaphore::new(conns.len())),
            idle: Mutex::new(conns),
            wait,
        })
    }

    pub(crate) fn role(&self) -> &'static str {
        self.role
    }

    /// How many connections the set was made with.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // The vector stays consistent whatever panicked while it was locked (push and pop only).
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `work` on a connection of this set, on a blocking thread.
    ///
    /// # Errors
    /// `Unavailable` when no connection became free within the wait, or the set is closed;
    /// whatever `work` returns; `Unexpected` when `work` panicked.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, work: F) -> Result<T, RepoError>
    where
        F: FnOnce(&mut Connection) -> Result<T, RepoError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = match tokio::time::timeout(
            self.wait,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(RepoError::Unavailable(Box::new(Closed))),
            Err(_elapsed) => {
                return Err(RepoError::Unavailable(Box::new(ConnectionWaitTimeout {
                    role: self.role,
                    wait: self.wait,
                })))
            }
        };
        let conn = self.idle().pop().ok_or_else(|| {
            // A permit is held only while its connection is lent, so one must be idle.
            RepoError::Unexpected(
                format!("no idle SQLite {} connection despite a permit", self.role).into(),
            )
        })?;
        let mut lease = Lease {
            conn: Some(conn),
            home: Arc::clone(self),
            permit: Some(permit),
        };
        tokio::task::spawn_blocking(move || match lease.conn.as_mut() {
            Some(conn) => work(conn),
            None => Err(RepoError::Unexpected("a lease without a connection".into())),
        })
        .await
        .map_err(errors::from_join)?
    }

    /// Refuses every later call and closes the idle connections now; lent ones are closed when
    /// their work ends. The last connection to close checkpoints the write-ahead log into the
    /// database file.
    pub(crate) fn close(&self) {
        self.permits.close();
        self.idle().clear();
    }
}

/// A connection lent to one piece of work, and the permit that says so.
struct Lease {
    conn: Option<Connection>,
    home: Arc<Connections>,
    // Released after `drop` has put the connection back: the field is dropped after the body.
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // A transaction left open (work that panicked between BEGIN and the drop of its
        // `Transaction`, which rolls back) must not leak into the next caller's work.
        if !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, role = self.home.role, "could not roll back a leftover transaction; closing the connection");
                // Without its connection the set is one smaller for good: the permit must go
                // too, or a later caller would find no idle connection.
                drop(conn);
                if let Some(permit) = self.permit.take() {
                    permit.forget();
                }
                return;
            }
        }
        if self.home.permits.is_closed() {
            return;
        }
        self.home.idle().push(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize, wait: Duration) -> rusqlite::Result<Arc<Connections>> {
        let conns = (0..n)
            .map(|_| Connection::open_in_memory())
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Connections::new("test", conns, wait))
    }

    #[tokio::test]
    async fn a_connection_comes_back_after_the_work_even_after_a_panic(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let conns = set(1, Duration::from_secs(5))?;
        let result = conns
            .run(|conn| -> Result<(), RepoError> {
                conn.execute_batch("BEGIN; CREATE TABLE t (x INTEGER)")
                    .map_err(errors::from_sqlite)?;
                #[allow(clippy::panic)]
                {
                    panic!("work that fails half-way");
                }
            })
            .await;
        assert!(matches!(result, Err(RepoError::Unexpected(_))));
        // The same (only) connection serves again, with the transaction rolled back.
        let tables: i64 = conns
            .run(|conn| {
                assert!(conn.is_autocommit());
                conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
                    .map_err(errors::from_sqlite)
            })
            .await?;
        assert_eq!(tables, 0);
        assert_eq!(conns.size(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn waiting_for_a_busy_connection_gives_up_as_unavailable(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let conns = set(1, Duration::from_millis(50))?;
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = tokio::spawn({
            let conns = Arc::clone(&conns);
            async move {
                conns
                    .run(move |_| {
                        let _ = started_tx.send(());
                        let _ = release_rx.recv();
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv()).await??;
        let waited = conns.run(|_| Ok(())).await;
        assert!(
            matches!(waited, Err(RepoError::Unavailable(_))),
            "{waited:?}"
        );
        release_tx.send(())?;
        holder.await??;
        conns.run(|_| Ok(())).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_closed_set_refuses_work() -> Result<(), Box<dyn std::error::Error>> {
        let conns = set(2, Duration::from_secs(5))?;
        conns.close();
        assert!(matches!(
            conns.run(|_| Ok(())).await,
            Err(RepoError::Unavailable(_))
        ));
        Ok(())
    }
}
