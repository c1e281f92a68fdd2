//! The adapter's errors: [`SqliteError`] for opening and migrating, and how SQLite's errors
//! become the port's [`RepoError`] (whatever says "not now" is `Unavailable`, the rest
//! `Unexpected`).

use rusqlite::ErrorCode;
use std::path::PathBuf;
use std::time::Duration;
use tasklane_domain::RepoError;

/// Why the store could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// A setting is out of range.
    #[error("invalid SQLite setting: {0}")]
    InvalidSetting(&'static str),
    /// The folder that should hold the database file could not be created.
    #[error("could not create the folder {} for the SQLite database", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file could not be opened or set up (not a database, no permission, locked by another
    /// process for longer than the busy timeout, ...).
    #[error("could not open the SQLite database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The file system does not support write-ahead logging (some network file systems), which
    /// the adapter needs so that readers never wait for the writer.
    #[error(
        "the SQLite database {} cannot use write-ahead logging (journal mode is {mode:?}); \
         put it on a local file system",
        path.display()
    )]
    NoWal { path: PathBuf, mode: String },
    /// SQLite failed while migrating (outside any one migration).
    #[error("SQLite error while migrating")]
    Database(#[source] rusqlite::Error),
    /// A migration failed; the transaction was rolled back, so nothing of this run remains.
    #[error("migration {name} failed")]
    MigrationFailed {
        name: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A file was edited after it was applied: the database's schema is not what this build's
    /// files say. Restore the file and put the change in a new migration.
    #[error(
        "migration {name} was changed after it was applied (recorded checksum {recorded}, \
         this build has {embedded}); restore it and add a new migration instead"
    )]
    MigrationChanged {
        name: &'static str,
        recorded: String,
        embedded: String,
    },
    /// The blocking task that did the work panicked or was cancelled (the runtime shut down).
    #[error("the SQLite worker task did not finish")]
    Task(#[source] tokio::task::JoinError),
}

impl From<rusqlite::Error> for SqliteError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e)
    }
}

/// No connection of the kind needed became free within the wait (the busy timeout): the writer
/// was held by other writes, or every reader by other reads.
#[derive(Debug, thiserror::Error)]
#[error("no SQLite {role} connection became free within {} ms", wait.as_millis())]
pub(crate) struct ConnectionWaitTimeout {
    pub(crate) role: &'static str,
    pub(crate) wait: Duration,
}

/// The repository was closed (graceful shutdown).
#[derive(Debug, thiserror::Error)]
#[error("the SQLite task store is closed")]
pub(crate) struct Closed;

/// A row that breaks a domain rule: the schema and the domain disagree, which is a bug.
#[derive(Debug, thiserror::Error)]
#[error("stored task {id} has an invalid {field}")]
pub(crate) struct InvalidRow {
    pub(crate) id: i64,
    pub(crate) field: &'static str,
    #[source]
    pub(crate) source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub(crate) fn from_sqlite(e: rusqlite::Error) -> RepoError {
    if is_unavailable(&e) {
        RepoError::Unavailable(Box::new(e))
    } else {
        RepoError::Unexpected(Box::new(e))
    }
}

pub(crate) fn from_join(e: tokio::task::JoinError) -> RepoError {
    if e.is_cancelled() {
        // Only happens while the runtime shuts down: "not now", like a closed pool.
        RepoError::Unavailable(Box::new(e))
    } else {
        RepoError::Unexpected(Box::new(e))
    }
}

/// Whether the error says the database cannot serve now, rather than that the request or the
/// code is wrong: another connection (of this process or another) held a lock for longer than
/// the busy timeout, or the disk is full (PostgreSQL's disk-full class is `Unavailable` too).
pub(crate) fn is_unavailable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn busy_locked_and_full_are_unavailable_the_rest_unexpected() {
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_FULL,
            // Extended codes carry the primary code in their low byte.
            ffi::SQLITE_BUSY_SNAPSHOT,
            ffi::SQLITE_LOCKED_SHAREDCACHE,
        ] {
            assert!(
                matches!(from_sqlite(failure(code)), RepoError::Unavailable(_)),
                "{code}"
            );
        }
        for code in [
            ffi::SQLITE_CONSTRAINT_CHECK,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_ERROR,
        ] {
            assert!(
                matches!(from_sqlite(failure(code)), RepoError::Unexpected(_)),
                "{code}"
            );
        }
        assert!(matches!(
            from_sqlite(rusqlite::Error::QueryReturnedNoRows),
            RepoError::Unexpected(_)
        ));
    }
}
