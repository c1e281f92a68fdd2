//! [`SqliteTaskRepository`]: the `TaskRepository` port on SQLite, behaving exactly as the
//! PostgreSQL adapter does (the port contract suite in `tasklane-testkit` runs on both).

use crate::errors::{self, InvalidRow};
use crate::pool::Connections;
use crate::search;
use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use tasklane_domain::{
    Created, Description, Idempotency, ListQuery, NewTask, Page, Precondition, RepoError,
    RequestFingerprint, Status, StatusCounts, Task, TaskId, TaskPatch, TaskRepository, Title,
    Version,
};

/// The columns every statement returns, in the order [`RawTask::from_row`] reads them.
macro_rules! task_columns {
    () => {
        "id, title, description, status, created_at, updated_at, version"
    };
}

/// `created_at` and `updated_at` are both the write's time, as PostgreSQL's `DEFAULT now()`
/// makes them.
const INSERT: &str = concat!(
    "INSERT INTO tasks (title, description, status, created_at, updated_at, version) ",
    "VALUES (?1, ?2, ?3, ?4, ?4, 1) RETURNING ",
    task_columns!()
);

/// A stored idempotency key: the snapshot as [`task_columns!`] (so [`RawTask::from_row`] reads
/// it: a created task has `updated_at = created_at` and version 1), then the fingerprint and
/// when the key was stored.
const SELECT_KEY: &str = "SELECT task_id, title, description, status, task_created_at, \
     task_created_at, 1, fingerprint, stored_at FROM task_idempotency_keys WHERE key = ?1";

const DELETE_KEY: &str = "DELETE FROM task_idempotency_keys WHERE key = ?1";

const INSERT_KEY: &str = "INSERT INTO task_idempotency_keys \
     (key, fingerprint, task_id, title, description, status, task_created_at, stored_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Removes one batch of keys stored before `?1`, oldest first.
const PURGE_KEYS: &str = "DELETE FROM task_idempotency_keys WHERE rowid IN \
     (SELECT rowid FROM task_idempotency_keys WHERE stored_at < ?1 ORDER BY stored_at LIMIT ?2)";

/// Keys removed per purge transaction: small, so that other writes never wait long for the
/// write lock.
const PURGE_BATCH: i64 = 1_000;
/// Batches per purge call at most; the next call goes on where this one stopped.
const PURGE_MAX_BATCHES: usize = 1_000;

const SELECT_BY_ID: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");

const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM tasks WHERE id = ?1)";

/// Absent patch fields keep their value; the version goes up by one; `updated_at` moves
/// strictly forward (one microsecond at least) even when two writes fall in the same
/// microsecond, or the clock steps back, so that it orders a task's changes. The same statement
/// as PostgreSQL's, `max` for `GREATEST`.
macro_rules! update_sql {
    ($condition:literal) => {
        concat!(
            "UPDATE tasks SET ",
            "title = coalesce(?2, title), ",
            "description = coalesce(?3, description), ",
            "status = coalesce(?4, status), ",
            "version = version + 1, ",
            "updated_at = max(?5, updated_at + 1) ",
            "WHERE id = ?1",
            $condition,
            " RETURNING ",
            task_columns!()
        )
    };
}

const UPDATE: &str = update_sql!("");
const UPDATE_IF_VERSION: &str = update_sql!(" AND version = ?6");

const DELETE: &str = "DELETE FROM tasks WHERE id = ?1";
const DELETE_IF_VERSION: &str = "DELETE FROM tasks WHERE id = ?1 AND version = ?2";

/// Three rows, whatever the number of tasks: the triggers keep them.
const COUNTS: &str = "SELECT status, n FROM task_status_counts";

/// The list statements, one per combination of filters, indexed by [`list_sql_index`]. Only
/// these eight texts exist, so each connection's statement cache keeps them all prepared.
static LIST_SQL: LazyLock<[String; 8]> =
    LazyLock::new(|| std::array::from_fn(|i| list_sql(i & 1 != 0, i & 2 != 0, i & 4 != 0)));

fn list_sql_index(status: bool, search: bool, cursor: bool) -> usize {
    usize::from(status) | usize::from(search) << 1 | usize::from(cursor) << 2
}

/// The list statement for one combination of filters, with named parameters: `:status`, `:q`
/// (the search text as typed, see [`search`]), `:at` and `:id` (the cursor), `:limit`.
fn list_sql(status: bool, search: bool, cursor: bool) -> String {
    let mut conditions = Vec::with_capacity(3);
    if status {
        conditions.push("status = :status".to_owned());
    }
    if search {
        let f = search::FUNCTION;
        conditions.push(format!("({f}(title, :q) OR {f}(description, :q))"));
    }
    if cursor {
        conditions.push("(created_at, id) < (:at, :id)".to_owned());
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!(
        concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks{} ORDER BY created_at DESC, id DESC LIMIT :limit"
        ),
        filter
    )
}

/// The task store on SQLite: one writer connection, which serializes the writes of this process
/// (SQLite allows one writer at a time anyway, so queueing here instead of in SQLite's busy
/// handler costs nothing and is fair), and a few reader connections, which write-ahead logging
/// lets read while the writer writes. All SQLite work runs on tokio's blocking threads.
///
/// Every write is one `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock first (waiting
/// up to the busy timeout for another process that holds it), so it never fails half-way for a
/// lock, and a conditional write that matches no row says why (`NotFound` or
/// `PreconditionFailed`) from the same snapshot.
#[derive(Clone)]
pub struct SqliteTaskRepository {
    writer: Arc<Connections>,
    readers: Arc<Connections>,
    path: Arc<Path>,
}

impl std::fmt::Debug for SqliteTaskRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTaskRepository")
            .field("path", &self.path)
            .field("writers", &self.writer.size())
            .field("readers", &self.readers.size())
            .finish()
    }
}

impl SqliteTaskRepository {
    pub(crate) fn new(path: PathBuf, writer: Arc<Connections>, readers: Arc<Connections>) -> Self {
        debug_assert_eq!(writer.role(), "writer");
        Self {
            writer,
            readers,
            path: path.into(),
        }
    }

    /// The database file, for the start-up log.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses every later call (`Unavailable`) and closes the connections, each as soon as the
    /// work on it (if any) ends: for a graceful shutdown. Closing the last one checkpoints the
    /// write-ahead log into the database file.
    pub fn close(&self) {
        self.writer.close();
        self.readers.close();
    }

    /// Says why a conditional write matched no row, from a read of its own: the task is gone,
    /// or the condition failed.
    async fn refusal(&self, id: TaskId) -> Result<RepoError, RepoError> {
        self.readers
            .run(move |conn| refusal(conn, id.get(), true))
            .await
    }
}

/// `PreconditionFailed` when the task exists and a condition was checked, else `NotFound`.
fn refusal(conn: &Connection, id: i64, conditional: bool) -> Result<RepoError, RepoError> {
    let exists: bool = conn
        .prepare_cached(EXISTS)
        .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)))
        .map_err(errors::from_sqlite)?;
    Ok(if exists && conditional {
        RepoError::PreconditionFailed
    } else {
        RepoError::NotFound
    })
}

/// Runs `work` in a `BEGIN IMMEDIATE` transaction, committed when it succeeds and rolled back
/// (when the `Transaction` is dropped) when it does not.
fn write<T>(
    conn: &mut Connection,
    work: impl FnOnce(&Transaction<'_>) -> Result<T, RepoError>,
) -> Result<T, RepoError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(errors::from_sqlite)?;
    let out = work(&tx)?;
    tx.commit().map_err(errors::from_sqlite)?;
    Ok(out)
}

/// The time of a write, in the stored form. Taken once the write lock is held, so that with a
/// single writer `created_at` follows the order of commits unless the clock steps back.
fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

#[async_trait]
impl TaskRepository for SqliteTaskRepository {
    /// With a key, the `BEGIN IMMEDIATE` transaction serializes this create with every other
    /// writer, in this process or another: a key is either committed, with its task, or absent.
    /// So a duplicate never finds it in flight here (the service refuses duplicates running in
    /// this process before they reach the store).
    #[tracing::instrument(
        level = "debug",
        skip(self, new, idempotency),
        fields(status = %new.status, idempotent = idempotency.is_some())
    )]
    async fn create(
        &self,
        new: NewTask,
        idempotency: Option<Idempotency>,
    ) -> Result<Created, RepoError> {
        let outcome = self
            .writer
            .run(move |conn| {
                write(conn, |tx| {
                    let now = now_micros();
                    if let Some(idempotency) = &idempotency {
                        if let Some(answer) = stored_key(tx, idempotency, now)? {
                            return Ok(answer);
                        }
                    }
                    let raw = tx
                        .prepare_cached(INSERT)
                        .and_then(|mut stmt| {
                            stmt.query_row(
                                (
                                    new.title.as_str(),
                                    new.description.as_str(),
                                    new.status.as_str(),
                                    now,
                                ),
                                RawTask::from_row,
                            )
                        })
                        .map_err(errors::from_sqlite)?;
                    if let Some(idempotency) = &idempotency {
                        tx.prepare_cached(INSERT_KEY)
                            .and_then(|mut stmt| {
                                stmt.execute((
                                    idempotency.key.as_str(),
                                    idempotency.fingerprint.as_bytes().as_slice(),
                                    raw.id,
                                    &raw.title,
                                    &raw.description,
                                    &raw.status,
                                    raw.created_at,
                                    now,
                                ))
                            })
                            .map_err(errors::from_sqlite)?;
                    }
                    Ok(Keyed::Inserted(raw))
                })
            })
            .await?;
        match outcome {
            Keyed::Inserted(raw) => Ok(Created {
                task: raw.into_task()?,
                replayed: false,
            }),
            Keyed::Replayed(snapshot) => Ok(Created {
                task: snapshot.into_task()?,
                replayed: true,
            }),
            Keyed::Reused => Err(RepoError::IdempotencyKeyReused),
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get(&self, id: TaskId) -> Result<Task, RepoError> {
        self.readers
            .run(move |conn| {
                conn.prepare_cached(SELECT_BY_ID)
                    .and_then(|mut stmt| stmt.query_row([id.get()], RawTask::from_row).optional())
                    .map_err(errors::from_sqlite)
            })
            .await?
            .ok_or(RepoError::NotFound)?
            .into_task()
    }

    #[tracing::instrument(
        level = "debug",
        skip(self, query),
        fields(
            status = ?query.status,
            search = query.search.is_some(),
            cursor = query.cursor.is_some(),
            limit = query.limit.get(),
        )
    )]
    async fn list(&self, query: &ListQuery) -> Result<Page, RepoError> {
        let status = query.status.map(Status::as_str);
        let search = query.search.as_ref().map(|s| s.as_str().to_owned());
        let cursor = query
            .cursor
            .map(|c| (c.created_at.timestamp_micros(), c.id.get()));
        // One more row than asked for proves that a next page exists.
        let fetch = i64::from(query.limit.get()) + 1;
        let sql: &'static str =
            LIST_SQL[list_sql_index(status.is_some(), search.is_some(), cursor.is_some())].as_str();

        let rows = self
            .readers
            .run(move |conn| {
                let mut params: Vec<(&str, &dyn ToSql)> = Vec::with_capacity(5);
                if let Some(status) = &status {
                    params.push((":status", status));
                }
                if let Some(search) = &search {
                    params.push((":q", search));
                }
                if let Some((at, id)) = &cursor {
                    params.push((":at", at));
                    params.push((":id", id));
                }
                params.push((":limit", &fetch));
                conn.prepare_cached(sql)
                    .and_then(|mut stmt| {
                        stmt.query_map(params.as_slice(), RawTask::from_row)?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(errors::from_sqlite)
            })
            .await?;
        let tasks = rows
            .into_iter()
            .map(RawTask::into_task)
            .collect::<Result<_, _>>()?;
        Ok(Page::from_rows(tasks, query.limit))
    }

    #[tracing::instrument(level = "debug", skip(self, patch))]
    async fn update(
        &self,
        id: TaskId,
        patch: TaskPatch,
        precondition: Precondition,
    ) -> Result<Task, RepoError> {
        let expected = match precondition {
            // Every update needs the row to exist, so `Exists` asks nothing more than `None`.
            Precondition::None | Precondition::Exists => None,
            Precondition::Version(v) => Some(v.get()),
            Precondition::Never => return Err(self.refusal(id).await?),
        };
        self.writer
            .run(move |conn| {
                write(conn, |tx| {
                    let title = patch.title.as_ref().map(Title::as_str);
                    let description = patch.description.as_ref().map(Description::as_str);
                    let status = patch.status.map(Status::as_str);
                    let row = match expected {
                        None => tx.prepare_cached(UPDATE).and_then(|mut stmt| {
                            stmt.query_row(
                                (id.get(), title, description, status, now_micros()),
                                RawTask::from_row,
                            )
                            .optional()
                        }),
                        Some(version) => {
                            tx.prepare_cached(UPDATE_IF_VERSION).and_then(|mut stmt| {
                                stmt.query_row(
                                    (id.get(), title, description, status, now_micros(), version),
                                    RawTask::from_row,
                                )
                                .optional()
                            })
                        }
                    }
                    .map_err(errors::from_sqlite)?;
                    match row {
                        Some(raw) => Ok(raw),
                        None => Err(refusal(tx, id.get(), expected.is_some())?),
                    }
                })
            })
            .await?
            .into_task()
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn delete(&self, id: TaskId, precondition: Precondition) -> Result<(), RepoError> {
        let expected = match precondition {
            Precondition::None | Precondition::Exists => None,
            Precondition::Version(v) => Some(v.get()),
            Precondition::Never => return Err(self.refusal(id).await?),
        };
        self.writer
            .run(move |conn| {
                write(conn, |tx| {
                    let deleted = match expected {
                        None => tx
                            .prepare_cached(DELETE)
                            .and_then(|mut stmt| stmt.execute([id.get()])),
                        Some(version) => tx
                            .prepare_cached(DELETE_IF_VERSION)
                            .and_then(|mut stmt| stmt.execute([id.get(), version])),
                    }
                    .map_err(errors::from_sqlite)?;
                    match deleted {
                        0 => Err(refusal(tx, id.get(), expected.is_some())?),
                        _ => Ok(()),
                    }
                })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn counts(&self) -> Result<StatusCounts, RepoError> {
        let rows = self
            .readers
            .run(|conn| {
                conn.prepare_cached(COUNTS)
                    .and_then(|mut stmt| {
                        stmt.query_map([], |row| {
                            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(errors::from_sqlite)
            })
            .await?;
        let mut counts = StatusCounts::default();
        for (status, n) in rows {
            let status = status
                .parse::<Status>()
                .map_err(|e| invalid_counter(&status, e))?;
            let n = u64::try_from(n).map_err(|e| invalid_counter(status.as_str(), e))?;
            counts.set(status, n);
        }
        Ok(counts)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn purge_idempotency_keys(&self, older_than: TimeDelta) -> Result<u64, RepoError> {
        let age = micros(older_than);
        let mut purged = 0;
        for _ in 0..PURGE_MAX_BATCHES {
            let n = self
                .writer
                .run(move |conn| {
                    write(conn, |tx| {
                        let cutoff = now_micros().saturating_sub(age);
                        tx.prepare_cached(PURGE_KEYS)
                            .and_then(|mut stmt| stmt.execute((cutoff, PURGE_BATCH)))
                            .map_err(errors::from_sqlite)
                    })
                })
                .await? as u64;
            purged += n;
            if n < PURGE_BATCH.unsigned_abs() {
                break;
            }
        }
        Ok(purged)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn ping(&self) -> Result<(), RepoError> {
        self.readers
            .run(|conn| {
                conn.prepare_cached("SELECT 1")
                    .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)))
                    .map(drop)
                    .map_err(errors::from_sqlite)
            })
            .await
    }
}

/// How an idempotent create's transaction ended.
enum Keyed {
    /// The task was inserted (and its key with it, if any).
    Inserted(RawTask),
    /// Nothing was written: the key is stored with the same request; this is its snapshot.
    Replayed(RawTask),
    /// Nothing was written: the key is stored with a different request.
    Reused,
}

/// The answer a stored, unexpired key gives, if there is one. An expired key is deleted here,
/// in the create's transaction, so that the create stores it afresh.
fn stored_key(
    tx: &Transaction<'_>,
    idempotency: &Idempotency,
    now: i64,
) -> Result<Option<Keyed>, RepoError> {
    let key = idempotency.key.as_str();
    let stored = tx
        .prepare_cached(SELECT_KEY)
        .and_then(|mut stmt| {
            stmt.query_row([key], |row| {
                Ok((
                    RawTask::from_row(row)?,
                    row.get::<_, Vec<u8>>(7)?,
                    row.get::<_, i64>(8)?,
                ))
            })
            .optional()
        })
        .map_err(errors::from_sqlite)?;
    let Some((snapshot, fingerprint, stored_at)) = stored else {
        return Ok(None);
    };
    // Expired exactly when PostgreSQL's `stored_at < now() - ttl` says so.
    if stored_at < now.saturating_sub(micros(idempotency.ttl)) {
        tx.prepare_cached(DELETE_KEY)
            .and_then(|mut stmt| stmt.execute([key]))
            .map_err(errors::from_sqlite)?;
        return Ok(None);
    }
    Ok(Some(
        if RequestFingerprint::from_slice(&fingerprint) == Some(idempotency.fingerprint) {
            Keyed::Replayed(snapshot)
        } else {
            Keyed::Reused
        },
    ))
}

/// A duration in whole microseconds, as timestamps are stored; saturating.
fn micros(d: TimeDelta) -> i64 {
    d.num_microseconds().unwrap_or(if d < TimeDelta::zero() {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn invalid_counter(status: &str, e: impl std::error::Error + Send + Sync + 'static) -> RepoError {
    RepoError::Unexpected(format!("the task counter for status {status:?} is invalid: {e}").into())
}

/// A row of [`task_columns!`] as stored, before the domain has checked it.
#[derive(Debug)]
struct RawTask {
    id: i64,
    title: String,
    description: String,
    status: String,
    created_at: i64,
    updated_at: i64,
    version: i64,
}

impl RawTask {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            title: row.get(1)?,
            description: row.get(2)?,
            status: row.get(3)?,
            created_at: row.get(4)?,
            updated_at: row.get(5)?,
            version: row.get(6)?,
        })
    }

    /// The task, through the domain's constructors: a stored value the domain would refuse is a
    /// bug, reported as `Unexpected` rather than served.
    fn into_task(self) -> Result<Task, RepoError> {
        let id = self.id;
        let invalid =
            |field: &'static str, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
                RepoError::Unexpected(Box::new(InvalidRow { id, field, source }))
            };
        let time = |micros: i64, field: &'static str| {
            DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(|| invalid(field, None))
        };
        Ok(Task {
            id: TaskId::new(id).ok_or_else(|| invalid("id", None))?,
            title: Title::new(self.title).map_err(|e| invalid("title", Some(Box::new(e))))?,
            description: Description::new(self.description)
                .map_err(|e| invalid("description", Some(Box::new(e))))?,
            status: self
                .status
                .parse()
                .map_err(|e: tasklane_domain::StatusError| invalid("status", Some(Box::new(e))))?,
            created_at: time(self.created_at, "created_at")?,
            updated_at: time(self.updated_at, "updated_at")?,
            version: if self.version >= 1 {
                Version::new(self.version)
            } else {
                return Err(invalid("version", None));
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_sql_names_only_the_parameters_it_uses() {
        assert_eq!(
            list_sql(false, false, false),
            "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
             ORDER BY created_at DESC, id DESC LIMIT :limit"
        );
        assert_eq!(
            list_sql(true, true, true),
            "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
             WHERE status = :status \
             AND (tasklane_icontains(title, :q) OR tasklane_icontains(description, :q)) \
             AND (created_at, id) < (:at, :id) ORDER BY created_at DESC, id DESC LIMIT :limit"
        );
        for (i, sql) in LIST_SQL.iter().enumerate() {
            let (status, search, cursor) = (i & 1 != 0, i & 2 != 0, i & 4 != 0);
            assert_eq!(list_sql_index(status, search, cursor), i);
            assert_eq!(*sql, list_sql(status, search, cursor));
            assert_eq!(sql.contains(":status"), status);
            assert_eq!(sql.contains(":q"), search);
            assert_eq!(sql.contains(":at"), cursor);
        }
    }

    /// The indexes serve every list statement: the order comes from an index (no sort step) and
    /// the cursor bounds the index scan, so a deep page costs what the first does.
    #[test]
    fn every_list_statement_is_served_by_an_index() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = Connection::open_in_memory()?;
        crate::migrate::apply(&mut conn)?;
        search::register(&conn)?;
        for (i, sql) in LIST_SQL.iter().enumerate() {
            let (status, cursor) = (i & 1 != 0, i & 4 != 0);
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let unbound = std::iter::repeat_n(rusqlite::types::Null, explain.parameter_count());
            let plan: Vec<String> = explain
                .query_map(rusqlite::params_from_iter(unbound), |r| r.get(3))?
                .collect::<Result<_, _>>()?;
            let plan = plan.join("\n");
            assert!(!plan.contains("TEMP B-TREE"), "a sort: {sql}\n{plan}");
            let index = if status {
                "tasks_status_created_id_idx"
            } else {
                "tasks_created_id_idx"
            };
            assert!(plan.contains(index), "{sql}\n{plan}");
            if cursor {
                // SQLite shows the row-value range by its leading column only.
                assert!(
                    plan.contains("created_at<?"),
                    "the cursor does not bound the scan: {sql}\n{plan}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn a_row_the_domain_refuses_is_unexpected() {
        let good = || RawTask {
            id: 1,
            title: "t".to_owned(),
            description: String::new(),
            status: "todo".to_owned(),
            created_at: 1_700_000_000_000_000,
            updated_at: 1_700_000_000_000_000,
            version: 1,
        };
        assert!(good().into_task().is_ok());
        let bad = [
            RawTask { id: 0, ..good() },
            RawTask {
                title: " ".to_owned(),
                ..good()
            },
            RawTask {
                status: "Done".to_owned(),
                ..good()
            },
            RawTask {
                created_at: i64::MAX,
                ..good()
            },
            RawTask {
                version: 0,
                ..good()
            },
        ];
        for raw in bad {
            assert!(
                matches!(raw.into_task(), Err(RepoError::Unexpected(_))),
                "accepted"
            );
        }
    }
}
