//! Where the database lives and how its connections are opened: [`open`] and [`migrate`].

use crate::errors::SqliteError;
use crate::migrate::apply as apply_migrations;
use crate::pool::Connections;
use crate::repository::SqliteTaskRepository;
use crate::search;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to open the store. The app builds it from its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteSettings {
    /// The database file; its folder is created when missing. SQLite keeps two more files beside
    /// it while open (`-wal` and `-shm`).
    pub path: PathBuf,
    /// How long a call waits for a lock: for SQLite's write lock when another process holds it,
    /// and for a free connection of this process. Past it the call fails as `Unavailable`.
    pub busy_timeout: Duration,
    /// How many connections serve reads side by side (writes have one of their own).
    pub read_connections: usize,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/tasklane.db"),
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
        }
    }
}

impl SqliteSettings {
    fn check(&self) -> Result<(), SqliteError> {
        if self.path.as_os_str().is_empty() {
            // SQLite would quietly use a temporary database that vanishes on close.
            return Err(SqliteError::InvalidSetting("path must not be empty"));
        }
        if self.busy_timeout < Duration::from_millis(1) {
            return Err(SqliteError::InvalidSetting(
                "busy_timeout must be at least 1 ms",
            ));
        }
        if self.read_connections == 0 {
            return Err(SqliteError::InvalidSetting(
                "read_connections must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Opens the store: creates the folder and the file when missing, applies the pending
/// migrations, and opens the writer and reader connections.
///
/// # Errors
/// `InvalidSetting`, `CreateDir`, `Open`, `NoWal`, or a migration error (see [`migrate`]).
#[tracing::instrument(skip(s), fields(path = %s.path.display()))]
pub async fn open(s: &SqliteSettings) -> Result<SqliteTaskRepository, SqliteError> {
    s.check()?;
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        create_parent(&s.path)?;
        let mut writer = connect(&s.path, s.busy_timeout, Role::Writer)?;
        apply_migrations(&mut writer)?;
        let readers = (0..s.read_connections)
            .map(|_| connect(&s.path, s.busy_timeout, Role::Reader))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SqliteTaskRepository::new(
            s.path,
            Connections::new("writer", vec![writer], s.busy_timeout),
            Connections::new("reader", readers, s.busy_timeout),
        ))
    })
    .await
    .map_err(SqliteError::Task)?
}

/// Applies every embedded migration the database has not recorded yet (creating the folder and
/// the file when missing) and returns how many it applied now: for `tasklane migrate`. [`open`]
/// does the same by itself.
///
/// All pending migrations run in one `BEGIN IMMEDIATE` transaction: a second process doing the
/// same waits (up to the busy timeout) and then finds nothing to do, and a failure leaves the
/// schema as it was.
///
/// # Errors
/// [`SqliteError::MigrationChanged`] when an applied file was edited since, and nothing is
/// applied then; [`SqliteError::MigrationFailed`] when a migration fails; the errors of
/// [`open`] when the file cannot be opened.
#[tracing::instrument(skip(s), fields(path = %s.path.display()))]
pub async fn migrate(s: &SqliteSettings) -> Result<usize, SqliteError> {
    s.check()?;
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        create_parent(&s.path)?;
        let mut conn = connect(&s.path, s.busy_timeout, Role::Writer)?;
        apply_migrations(&mut conn)
    })
    .await
    .map_err(SqliteError::Task)?
}

fn create_parent(path: &Path) -> Result<(), SqliteError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| SqliteError::CreateDir {
                path: dir.to_owned(),
                source,
            })
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

/// Puts the file in write-ahead logging (readers never wait for the writer nor the writer for
/// readers) and answers the journal mode it is in.
///
/// WAL is a property of the file, kept once set, so the mode is read first and nothing more is
/// done when it is WAL already (no lock taken). Converting takes an exclusive lock, and where
/// waiting for it could deadlock (this connection holds a read lock while another holds the
/// write lock) SQLite returns "database is locked" at once instead of running the busy
/// handler: a process opening a new file while another one does (both starting at once, or
/// `tasklane migrate` beside `tasklane serve`) failed. So a busy conversion is tried again,
/// after a pause of 1 ms growing to 50 ms, for as long as the busy timeout, reading the mode
/// again each time (the other opener may have converted it).
fn set_wal(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<String> {
    let mode = |conn: &Connection| conn.pragma_query_value(None, "journal_mode", |row| row.get(0));
    let deadline = std::time::Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let current: String = mode(conn)?;
        if current.eq_ignore_ascii_case("wal") {
            return Ok(current);
        }
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Opens one connection and sets it up. The busy timeout comes first, so that the settings
/// below, which may need a lock, wait for another process rather than fail at once.
fn connect(path: &Path, busy_timeout: Duration, role: Role) -> Result<Connection, SqliteError> {
    let open_error = |source| SqliteError::Open {
        path: path.to_owned(),
        source,
    };
    // No SQLITE_OPEN_URI: the path is a file name, never a `file:` URI with options.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
    conn.busy_timeout(busy_timeout).map_err(open_error)?;
    let mode = set_wal(&conn, busy_timeout).map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteError::NoWal {
            path: path.to_owned(),
            mode,
        });
    }
    // With WAL, NORMAL syncs at checkpoints, not at every commit: a power cut may lose the last
    // commits but never corrupts the database. A process crash loses nothing.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_error)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(open_error)?;
    if role == Role::Reader {
        // A reader that tried to write would bypass the writer's queue.
        conn.pragma_update(None, "query_only", true)
            .map_err(open_error)?;
    }
    // The list's eight statements and a handful of others, with room to spare.
    conn.set_prepared_statement_cache_capacity(32);
    search::register(&conn).map_err(open_error)?;
    Ok(conn)
}
