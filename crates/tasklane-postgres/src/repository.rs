//! [`PgTaskRepository`]: the `TaskRepository` port on PostgreSQL.

use crate::combine::{self, Combiner, Turn, Waiter};
use crate::errors::{self, InvalidRow, QueryTimeout};
use crate::joined_lists::{JoinedLists, Opening};
use crate::pool::{Client, Pool};
use crate::search_slots::{default_search_slots, SearchSlots, SearchSlotsStatus};
use crate::shared_reads::SharedReads;
use crate::trigrams::{Probe, Samples, TrigramSample};
use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use deadpool_postgres::Transaction;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tasklane_domain::{
    Created, Description, Idempotency, ListQuery, NewTask, Page, Precondition, RepoError,
    RequestFingerprint, Status, StatusCounts, Task, TaskId, TaskPatch, TaskRepository, Title,
    Version,
};
use tokio::time::error::Elapsed;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CancelToken, NoTls, Row};

/// The columns every statement returns, in the order [`task_from_row`] reads them.
macro_rules! task_columns {
    () => {
        "id, title, description, status, created_at, updated_at, version"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO tasks (title, description, status) VALUES ($1, $2, $3) RETURNING ",
    task_columns!()
);

/// How long an idempotent create waits for a key that another transaction holds (another
/// replica's create of the same key, not yet committed) before answering "in flight". Only the
/// claim of the key runs under it; the rest of the transaction goes back to the default.
const CLAIM_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '100ms'";
const DEFAULT_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = DEFAULT";

/// Whether a key row was stored more than the given number of microseconds ago, by the
/// database's clock (the same for every replica).
macro_rules! expired {
    ($micros:literal) => {
        concat!(
            "stored_at < now() - ",
            $micros,
            "::bigint * interval '1 microsecond'"
        )
    };
}

/// Claims a key: the first statement of an idempotent create. While another transaction holds
/// an uncommitted row of the same key, this waits (bounded by [`CLAIM_LOCK_TIMEOUT`]); once that
/// row is committed it returns nothing, and [`SELECT_KEY`] reads it. `task_created_at` is the
/// transaction's time, which is also what the task's `created_at` will be; the task's id is
/// filled in by [`INSERT_WITH_KEY`].
const CLAIM_KEY: &str = "INSERT INTO task_idempotency_keys \
     (key, fingerprint, title, description, status, task_created_at, stored_at) \
     VALUES ($1, $2, $3, $4, $5, now(), now()) \
     ON CONFLICT (key) DO NOTHING RETURNING true";

/// A stored key: the snapshot as [`task_columns!`] (so [`task_from_row`] reads it: a created
/// task has `updated_at = created_at` and version 1), then the fingerprint and whether it
/// expired (`$2`: the time to live in microseconds).
const SELECT_KEY: &str = concat!(
    "SELECT task_id, title, description, status, task_created_at, task_created_at, 1::bigint, ",
    "fingerprint, ",
    expired!("$2"),
    " FROM task_idempotency_keys WHERE key = $1"
);

/// Claims a key whose row expired (the cleanup has not removed it yet): it counts as absent.
/// The row lock makes two such takeovers wait for each other, like two inserts.
const TAKE_OVER_EXPIRED_KEY: &str = concat!(
    "UPDATE task_idempotency_keys SET fingerprint = $2, task_id = NULL, title = $3, ",
    "description = $4, status = $5, task_created_at = now(), stored_at = now() WHERE key = $1 AND ",
    expired!("$6"),
    " RETURNING true"
);

/// Inserts the task and completes the claimed key's snapshot with it, in one round trip.
const INSERT_WITH_KEY: &str = concat!(
    "WITH t AS (INSERT INTO tasks (title, description, status) VALUES ($1, $2, $3) RETURNING ",
    task_columns!(),
    "), recorded AS (UPDATE task_idempotency_keys AS k ",
    "SET task_id = t.id, task_created_at = t.created_at FROM t WHERE k.key = $4) ",
    "SELECT ",
    task_columns!(),
    " FROM t"
);

/// Removes one batch of keys stored more than `$1` microseconds ago, oldest first. `SKIP
/// LOCKED` lets several replicas purge at once without waiting for each other (each row is
/// deleted once), and leaves alone a key that a create is taking over.
const PURGE_KEYS: &str = concat!(
    "DELETE FROM task_idempotency_keys WHERE key IN (SELECT key FROM task_idempotency_keys WHERE ",
    expired!("$1"),
    " ORDER BY stored_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
);

/// Keys removed per purge statement: small enough that each holds its locks for milliseconds.
const PURGE_BATCH: i64 = 1_000;
/// Batches per purge call at most; the next call goes on where this one stopped.
const PURGE_MAX_BATCHES: usize = 1_000;

const SELECT_BY_ID: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1");

const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1)";

/// Absent patch fields keep their value; the version goes up by one per update; `updated_at`
/// moves strictly forward, by at least a microsecond per update, even when two writes fall in
/// the same transaction-start microsecond, or the clock steps back, so that it orders a task's
/// changes.
macro_rules! update_sql {
    ($versions:literal, $micros:literal, $condition:literal) => {
        concat!(
            "UPDATE tasks SET ",
            "title = COALESCE($2, title), ",
            "description = COALESCE($3, description), ",
            "status = COALESCE($4, status), ",
            "version = version + ",
            $versions,
            ", ",
            "updated_at = GREATEST(now(), updated_at + ",
            $micros,
            ") ",
            "WHERE id = $1",
            $condition,
            " RETURNING ",
            task_columns!()
        )
    };
}

const UPDATE: &str = update_sql!("1", "interval '1 microsecond'", "");
const UPDATE_IF_VERSION: &str = update_sql!("1", "interval '1 microsecond'", " AND version = $5");
/// The updates of one batch (`combine.rs`), `$5` of them, as one: their patches combined.
const UPDATE_BATCH: &str = update_sql!("$5::bigint", "$5::bigint * interval '1 microsecond'", "");

const DELETE: &str = "DELETE FROM tasks WHERE id = $1";
const DELETE_IF_VERSION: &str = "DELETE FROM tasks WHERE id = $1 AND version = $2";

/// About 2,000 tasks' texts, whatever the size of the table (`SYSTEM` sampling reads whole pages
/// at random: a few dozen pages, not the table), for `trigrams.rs`. Until the table has been
/// analyzed `reltuples` is -1, and the whole table (up to the limit) is read. Descriptions are
/// cut to their first 500 characters, so a sample stays within a few MB however long they are
/// (up to 10,000 characters): a word common only further in is then taken for rare, which
/// costs speed, never a result.
const SAMPLE_TEXTS: &str = "SELECT title_folded, left(description_folded, 500) FROM tasks \
     TABLESAMPLE SYSTEM ((SELECT LEAST(100, 2000 * 100.0 / GREATEST(reltuples, 1)) \
     FROM pg_class WHERE oid = 'tasks'::regclass)::real) LIMIT 4000";

/// The planner's estimate of the number of tasks (-1 before the table was first analyzed).
const TABLE_ROWS: &str = "SELECT reltuples::float8 FROM pg_class WHERE oid = 'tasks'::regclass";

/// At most 3 statuses × 16 shards rows, whatever the number of tasks.
const COUNTS: &str = "SELECT status, SUM(n)::BIGINT FROM task_status_counts GROUP BY status";

/// How many characters of each lower-cased description the list's index carries
/// (`description_head`, migration 0006).
const DESCRIPTION_HEAD_CHARS: usize = 300;

/// How a list is searched, if it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SearchBy {
    No,
    /// By the whole text, as a `LIKE` pattern the trigram indexes look up.
    Pattern,
    /// By the whole text, walking the list in order: a prepared statement whose pattern the
    /// planner cannot see (`LIKE (SELECT lower($p))`), so its plan is the walk whatever the text,
    /// planned once per connection rather than for each search. For a text the sample says many
    /// tasks hold (`TrigramSample::walks`), without a status filter (with one, a plan blind to
    /// the pattern intersects the status index with the trigram indexes instead).
    Walk,
    /// The trigram indexes look up a part of the text (a `LIKE` pattern: one rare word, or a
    /// trigram of each of a few words), and each row found is checked for the whole text
    /// (`strpos`, which no index serves, so the planner cannot bring the text's other trigrams
    /// back into the lookup): see `trigrams.rs`. The planner may also walk the list instead.
    Probe,
    /// As `Probe`, but every row holding the pattern is fetched before the page is taken from
    /// them in order, so that the planner does not walk the list instead (see `list_sql`): for
    /// the few rows the sample says hold a text's key trigrams (`Probe::FetchAll`).
    FetchAll,
}

const SEARCHES: [SearchBy; 5] = [
    SearchBy::No,
    SearchBy::Pattern,
    SearchBy::Probe,
    SearchBy::FetchAll,
    SearchBy::Walk,
];

/// The list statements, one per combination of filters, indexed by [`list_sql_index`]. Only
/// these texts exist; the unsearched ones and the walks are prepared once per connection and
/// kept in its statement cache.
static LIST_SQL: LazyLock<[String; 20]> =
    LazyLock::new(|| std::array::from_fn(|i| list_sql(i % 2 == 1, SEARCHES[i / 2 % 5], i >= 10)));

fn list_sql_index(status: bool, search: SearchBy, cursor: bool) -> usize {
    let search = match search {
        SearchBy::No => 0,
        SearchBy::Pattern => 1,
        SearchBy::Probe => 2,
        SearchBy::FetchAll => 3,
        SearchBy::Walk => 4,
    };
    usize::from(status) + 2 * search + 10 * usize::from(cursor)
}

/// The list statement for one combination of filters. The parameters, in order: the status if
/// filtered; the search pattern if searched by pattern or walk, or the probe's pattern and the
/// search text if by probe; the cursor's `created_at` and `id` if any; then the row limit.
fn list_sql(status: bool, search: SearchBy, cursor: bool) -> String {
    let mut conditions = Vec::with_capacity(4);
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    if status {
        conditions.push(format!("status = ${}", next()));
    }
    match search {
        SearchBy::No => {}
        SearchBy::Pattern => {
            // `title ILIKE $p`, computed as PostgreSQL computes it (`lower()` of both sides,
            // then `LIKE`) but on the texts lower-cased when they were written (migration
            // 0003). A search is planned with its pattern (see `list`), so `lower($p)` is folded
            // into a constant the trigram indexes and the row estimates can use.
            // `like_pattern()` escapes `%`, `_` and `\` with a backslash; the ESCAPE says so
            // explicitly.
            let p = next();
            conditions.push(format!(
                "(title_folded LIKE lower(${p}) ESCAPE '\\' \
                 OR description_folded LIKE lower(${p}) ESCAPE '\\')"
            ));
        }
        SearchBy::Walk => {
            // As `Pattern`, but lower-cased in a subquery, run once (an init plan), which the
            // planner cannot look into: the plan is the same for every pattern, so the
            // prepared statement switches to one generic plan after its first five runs. The
            // backslash that `like_pattern()` escapes with is `LIKE`'s default escape.
            //
            // The walk tests what the list's index carries (an index-only scan): the title and
            // the description's first 300 characters (migration 0006). Only a task whose head
            // may be cut short (300 bytes or more: a head of 300 characters has at least that
            // many, and its length in bytes is read without counting characters) and does not
            // match there has its whole description read, by primary key (a scalar subquery,
            // run for such a row only: the planner would turn an `EXISTS` into one lookup of
            // every row the trigram index finds). The same rows as `Pattern`.
            let p = next();
            conditions.push(format!(
                "(title_folded LIKE (SELECT lower(${p}::text)) \
                 OR description_head LIKE (SELECT lower(${p}::text)) \
                 OR (octet_length(description_head) >= {DESCRIPTION_HEAD_CHARS} \
                 AND (SELECT whole.description_folded FROM tasks AS whole \
                 WHERE whole.id = tasks.id) LIKE (SELECT lower(${p}::text))))"
            ));
        }
        SearchBy::Probe | SearchBy::FetchAll => {
            // The probe is letters and digits only: nothing to escape.
            let (p, text) = (next(), next());
            conditions.push(format!(
                "(title_folded LIKE lower(${p}) OR description_folded LIKE lower(${p}))"
            ));
            conditions.push(format!(
                "(strpos(title_folded, lower(${text})) > 0 \
                 OR strpos(description_folded, lower(${text})) > 0)"
            ));
        }
    }
    if cursor {
        let (at, id) = (next(), next());
        conditions.push(format!("(created_at, id) < (${at}, ${id})"));
    }
    let limit = next();
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    if search == SearchBy::FetchAll {
        // The sample says few tasks hold the trigrams looked up (`trigrams.rs`), but the
        // planner cannot know it: it estimates such a pattern at about one row in a hundred and,
        // for a page of 100, walks the list in order testing every row, which passes thousands
        // of rows when the matches are spread out (13,000 for "review alpha" over 100,000 tasks).
        // A subquery with an `OFFSET` is planned on its own, never merged into the query
        // around it, so the order and the limit stay out of the lookup's plan: the trigram
        // indexes find every row holding the trigrams, and the page is sorted out of those.
        // The rows are read from the table to be tested anyway, so they are taken whole there,
        // not fetched again by primary key (13% less time for "review alpha" than its ids
        // first, docs/PERFORMANCE.md section 20).
        format!(
            concat!(
                "SELECT * FROM (SELECT ",
                task_columns!(),
                " FROM tasks{} OFFSET 0) AS found ORDER BY created_at DESC, id DESC LIMIT ${}"
            ),
            filter, limit
        )
    } else if search != SearchBy::No {
        // A walk's limit, like its pattern, is given in a subquery the planner cannot look
        // into: with the row limit in view, its own plan for a page of 100 would cost less than
        // the generic plan's (which takes a limit it cannot see for a tenth of the rows it
        // expects), on a large table by far, and PostgreSQL would plan every run afresh.
        let limit = if search == SearchBy::Walk {
            format!("(SELECT ${limit}::bigint)")
        } else {
            format!("${limit}")
        };
        // The page's ids first, then their rows. Walking the list in order, a walk's ids and
        // the texts it tests come from `tasks_created_id_idx` alone (an index-only scan: it
        // carries the folded title and the description's head, migrations 0004 and 0006), so
        // the rows passed over are not read from the table; only the page's rows are, by
        // primary key. (A `Pattern` or `Probe` statement the planner chooses to walk tests the
        // whole description, read from the table.) A search served by the trigram
        // indexes reads its matches from the table either way. The ids come as an array (an
        // init plan, run once), which plans and runs faster than a join on them. The rows come
        // in the primary key's order and are put in the list's by `list` (cheaper there than
        // a sort of the whole rows on the server, docs/PERFORMANCE.md section 20).
        format!(
            concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE id = ANY(ARRAY(SELECT id FROM tasks{} ",
                "ORDER BY created_at DESC, id DESC LIMIT {}))"
            ),
            filter, limit
        )
    } else {
        format!(
            concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks{} ORDER BY created_at DESC, id DESC LIMIT ${}"
            ),
            filter, limit
        )
    }
}

/// The task store on PostgreSQL.
///
/// Every statement runs within `query_timeout`. When one does not finish in time, the adapter
/// asks the server to cancel it and discards the connection rather than return it to the pool
/// with a statement possibly still running on it, and reports `Unavailable`.
///
/// Text searches also take one of a few search slots first (a bulkhead: see
/// `search_slots.rs`): by default half the pool, waited for as long as a connection is.
#[derive(Clone, Debug)]
pub struct PgTaskRepository {
    pool: Pool,
    query_timeout: Duration,
    searches: Arc<SearchSlots>,
    samples: Arc<Samples>,
    combiner: Arc<Combiner>,
    /// The longest an update waits for the updates of its task ahead of it.
    combined_wait: Duration,
    /// Point reads made at the same time on a thread share a connection (`shared_reads.rs`).
    point_reads: SharedReads,
    /// Identical list reads waiting to start share one statement (`joined_lists.rs`).
    lists: Arc<JoinedLists>,
}

impl PgTaskRepository {
    pub fn new(pool: Pool, query_timeout: Duration) -> Self {
        let slots = default_search_slots(pool.status().max_size);
        Self::with_slots(pool, query_timeout, slots)
    }

    /// Lets at most `slots` text searches run at once (at least one); the others wait their
    /// turn, in order, for as long as the pool's wait timeout.
    #[must_use]
    pub fn with_search_slots(self, slots: usize) -> Self {
        Self::with_slots(self.pool, self.query_timeout, slots)
    }

    fn with_slots(pool: Pool, query_timeout: Duration, slots: usize) -> Self {
        let wait = pool.timeouts().wait.unwrap_or(query_timeout);
        Self {
            pool,
            query_timeout,
            searches: Arc::new(SearchSlots::new(slots, wait)),
            samples: Arc::default(),
            combiner: Arc::default(),
            combined_wait: 2 * (wait + query_timeout),
            point_reads: SharedReads::new(),
            lists: Arc::default(),
        }
    }

    /// The pool, for health reports and for closing it on shutdown.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The search slots' state, for `/metrics`.
    pub fn search_slots(&self) -> SearchSlotsStatus {
        self.searches.status()
    }

    /// Takes a new sample of the tasks' texts for searches to choose their lookups by
    /// (`trigrams.rs`), now, and returns how many tasks it holds. Searches also take one
    /// themselves, in the background, on the first search and every ten minutes after.
    ///
    /// # Errors
    /// `Unavailable` when PostgreSQL is; the searches then keep the sample they had.
    pub async fn resample_search_texts(&self) -> Result<u32, RepoError> {
        self.resample(self.samples.force()).await
    }

    /// The `LIKE` pattern a search for `text` looks up in the trigram indexes instead of the
    /// whole text, by the current sample, if any: for diagnostics and tests.
    pub fn search_probe(&self, text: &str) -> Option<String> {
        self.samples.current().probe(text).map(Probe::into_pattern)
    }

    async fn resample(&self, resampling: crate::trigrams::Resampling) -> Result<u32, RepoError> {
        let mut client = self.client().await?;
        let outcome = tokio::time::timeout(self.query_timeout, async {
            // Never waits behind a lock (a migration's, say): a sample is not worth a
            // connection held that long, and the next search tries again later.
            let tx = client.transaction().await?;
            tx.batch_execute("LOCK TABLE tasks IN ACCESS SHARE MODE NOWAIT")
                .await?;
            let stmt = tx.prepare_cached(SAMPLE_TEXTS).await?;
            let rows = tx.query(&stmt, &[]).await?;
            let table_rows: f64 = tx.query_one(TABLE_ROWS, &[]).await?.try_get(0)?;
            tx.commit().await?;
            Ok((rows, table_rows))
        })
        .await;
        let (rows, table_rows) = self.settle(client, outcome)?;
        let texts = rows
            .iter()
            .map(|row| {
                let title: Option<&str> = row.try_get(0)?;
                let description: Option<&str> = row.try_get(1)?;
                Ok([title.unwrap_or_default(), description.unwrap_or_default()])
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(errors::from_pg)?;
        let sample = TrigramSample::from_texts(texts).of_a_table_of(table_rows);
        let sampled = sample.rows();
        resampling.done(sample);
        Ok(sampled)
    }

    /// Starts taking a new sample in the background if one is due.
    fn resample_if_due(&self) {
        if let Some(resampling) = self.samples.claim() {
            let repo = self.clone();
            tokio::spawn(async move {
                if let Err(e) = repo.resample(resampling).await {
                    tracing::debug!(error = %e, "could not sample the tasks' texts");
                }
            });
        }
    }

    /// How many unconditional updates wait now for an update of the same task to end, to go to
    /// PostgreSQL together (`combine.rs`): for diagnostics and tests.
    pub fn waiting_updates(&self) -> usize {
        self.combiner.waiting()
    }

    /// How many list reads joined an identical one waiting to start instead of sending their
    /// own statement (`joined_lists.rs`), since start: for `/metrics`.
    pub fn joined_lists(&self) -> u64 {
        self.lists.joined()
    }

    /// How many updates were written with at least one other in one `UPDATE` (`combine.rs`),
    /// since start: for `/metrics`.
    pub fn combined_updates(&self) -> u64 {
        self.combiner.combined()
    }

    /// One list read (`list`), which identical reads may join until its statement is sent.
    async fn read_list(&self, query: &ListQuery, mut opening: Opening) -> Result<Page, RepoError> {
        let status = query.status.map(Status::as_str);
        let text = query.search.as_ref().map(|s| s.as_str());
        // One more row than asked for proves that a next page exists.
        let fetch = query.limit.get() + 1;
        // A search text with a rare word among common ones looks up only that word, one of
        // several words rare only together a trigram of each; one that many tasks hold walks
        // the list (`trigrams.rs`); any other looks up its whole text.
        let sample = text.map(|_| {
            self.resample_if_due();
            self.samples.current()
        });
        let probe = text.zip(sample.as_ref()).and_then(|(t, s)| s.probe(t));
        let search = match (text, &probe) {
            (None, _) => SearchBy::No,
            (Some(_), Some(Probe::Pattern(_))) => SearchBy::Probe,
            (Some(_), Some(Probe::FetchAll(_))) => SearchBy::FetchAll,
            (Some(text), None)
                if status.is_none() && sample.as_ref().is_some_and(|s| s.walks(text, fetch)) =>
            {
                SearchBy::Walk
            }
            (Some(_), None) => SearchBy::Pattern,
        };
        drop(sample);
        let pattern = probe
            .map(Probe::into_pattern)
            .or_else(|| query.search.as_ref().map(|s| s.like_pattern()));
        let cursor = query.cursor.map(|c| (c.created_at, c.id.get()));
        let fetch = i64::from(fetch);

        let sql = &LIST_SQL[list_sql_index(status.is_some(), search, cursor.is_some())];
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::with_capacity(6);
        if let Some(status) = &status {
            params.push((status, Type::TEXT));
        }
        if let Some(pattern) = &pattern {
            params.push((pattern, Type::TEXT));
        }
        if let (SearchBy::Probe | SearchBy::FetchAll, Some(text)) = (search, &text) {
            params.push((text, Type::TEXT));
        }
        if let Some((created_at, id)) = &cursor {
            params.push((created_at, Type::TIMESTAMPTZ));
            params.push((id, Type::INT8));
        }
        params.push((&fetch, Type::INT8));

        // Held until the rows are read: a search waits here, in order, while the slots are
        // taken, rather than on a connection or on the database's CPU.
        let _slot = if pattern.is_some() {
            Some(self.searches.acquire().await?)
        } else {
            None
        };
        let client = self.client().await?;
        // From here on, a read of the same page starts (or joins) another statement: this one
        // may have started before that reader arrived.
        opening.close();
        let outcome = tokio::time::timeout(self.query_timeout, async {
            if pattern.is_some() && search != SearchBy::Walk {
                // A search is planned afresh each time, with its pattern in view (the trigram
                // indexes, the estimates). Once a cached statement has run five times,
                // PostgreSQL may switch it to a generic plan that cannot see the pattern and
                // walks the list index filtering every row: 335 ms instead of 0.3 ms for a rare
                // word over 100,000 tasks (docs/PERFORMANCE.md). An unnamed statement with its
                // parameter types given is parsed, bound and run in one round trip (a prepared
                // one took two, and a third message to close it).
                client.query_typed(sql, &params).await
            } else {
                // The other list shapes, and the walk, keep their cached statements.
                let stmt = client.prepare_cached(sql).await?;
                let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
                client.query(&stmt, &values).await
            }
        })
        .await;
        let rows = self.settle(client, outcome)?;
        let mut tasks: Vec<Task> = rows.iter().map(task_from_row).collect::<Result<_, _>>()?;
        if matches!(search, SearchBy::Pattern | SearchBy::Probe | SearchBy::Walk) {
            // Fetched by primary key in its order (`list_sql`): the list's order, newest first.
            tasks.sort_unstable_by_key(|t| std::cmp::Reverse((t.created_at, t.id)));
        }
        Ok(Page::from_rows(tasks, query.limit))
    }

    /// One `UPDATE` of the task: `None` when no row matched (the task is gone, or not at the
    /// version asked for).
    async fn update_row(
        &self,
        id: TaskId,
        patch: &TaskPatch,
        steps: Steps,
    ) -> Result<Option<Task>, RepoError> {
        let title = patch.title.as_ref().map(Title::as_str);
        let description = patch.description.as_ref().map(Description::as_str);
        let status = patch.status.map(Status::as_str);
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.query_timeout, async {
            let (sql, extra) = match &steps {
                Steps::One => (UPDATE, None),
                Steps::IfVersion(version) => (UPDATE_IF_VERSION, Some(version)),
                Steps::Batch(count) => (UPDATE_BATCH, Some(count)),
            };
            let stmt = client.prepare_cached(sql).await?;
            let id = id.get();
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id, &title, &description, &status];
            if let Some(extra) = extra {
                params.push(extra);
            }
            client.query_opt(&stmt, &params).await
        })
        .await;
        self.settle(client, outcome)?
            .map(|row| task_from_row(&row))
            .transpose()
    }

    /// Runs the updates that waited for an update of `id`, batch by batch, and those that
    /// arrive meanwhile, until none is left; in the background, so that no caller going away
    /// stops it.
    fn run_waiters(&self, id: TaskId, waiters: Vec<Waiter>) {
        // Made before the task is spawned, so that it fails the waiters even if the runtime
        // drops the task before it first runs (shutting down).
        let unfinished = Abandon {
            combiner: Arc::clone(&self.combiner),
            id: Some(id.get()),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let repo = self.clone();
        runtime.spawn(async move {
            let mut unfinished = unfinished;
            let mut waiting = waiters;
            loop {
                loop {
                    let batch = combine::next_batch(&mut waiting);
                    if batch.is_empty() {
                        break;
                    }
                    let count = batch.len();
                    let (patches, replies): (Vec<TaskPatch>, Vec<_>) =
                        batch.into_iter().map(|w| (w.patch, w.reply)).unzip();
                    let steps = Steps::Batch(i64::try_from(count).unwrap_or(i64::MAX));
                    let outcome = repo
                        .update_row(id, &combine::combined(&patches), steps)
                        .await;
                    // A caller that went away no longer needs its answer: sends may fail.
                    match outcome {
                        Ok(Some(last)) => {
                            repo.combiner.record_written(count);
                            for (reply, task) in
                                replies.into_iter().zip(combine::states(&last, &patches))
                            {
                                let _ = reply.send(Ok(task));
                            }
                        }
                        Ok(None) => {
                            for reply in replies {
                                let _ = reply.send(Err(RepoError::NotFound));
                            }
                        }
                        Err(error) => {
                            // The rest would meet the same failure, one after another.
                            let error = Arc::new(error);
                            let rest = waiting.drain(..).map(|w| w.reply);
                            for reply in replies.into_iter().chain(rest) {
                                let _ =
                                    reply.send(Err(errors::shared(&error, "a combined update")));
                            }
                        }
                    }
                }
                match repo.combiner.next(id.get()) {
                    Some(more) => waiting = more,
                    None => break,
                }
            }
            unfinished.id = None;
        });
    }

    async fn client(&self) -> Result<Client, RepoError> {
        self.pool.get().await.map_err(errors::from_pool)
    }

    /// Turns the outcome of one bounded piece of work on `client` into the port's result. On a
    /// timeout the statement may still be running on the server: it is cancelled there (in the
    /// background, bounded too), and the connection is detached from the pool and closed.
    fn settle<T>(
        &self,
        client: Client,
        outcome: Result<Result<T, tokio_postgres::Error>, Elapsed>,
    ) -> Result<T, RepoError> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(errors::from_pg(e)),
            Err(_) => {
                let timed_out = self.timed_out(client.cancel_token());
                drop(Client::take(client));
                Err(timed_out)
            }
        }
    }

    /// What a statement that ran out of time on a connection answers: the statement is
    /// cancelled on the server (in the background, bounded too); the caller discards the
    /// connection.
    fn timed_out(&self, cancel: CancelToken) -> RepoError {
        tracing::warn!(
            timeout_ms = QueryTimeout::millis(self.query_timeout),
            "query timed out; cancelling it and discarding its connection"
        );
        let bound = self.query_timeout.max(Duration::from_secs(1));
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(bound, cancel.cancel_query(NoTls)).await {
                tracing::warn!(error = %e, "could not cancel a timed-out query");
            }
        });
        RepoError::Unavailable(Box::new(QueryTimeout(self.query_timeout)))
    }

    /// An idempotent create: one transaction that claims the key, then inserts the task and
    /// completes the key's snapshot, or writes nothing and answers from the stored key.
    async fn create_keyed(
        &self,
        new: NewTask,
        idempotency: Idempotency,
    ) -> Result<Created, RepoError> {
        let mut client = self.client().await?;
        let outcome = tokio::time::timeout(self.query_timeout, async {
            let tx = client.transaction().await?;
            tx.batch_execute(CLAIM_LOCK_TIMEOUT).await?;
            let refused = match claim(&tx, &new, &idempotency).await? {
                Claim::Claimed => None,
                Claim::Stored(row) => Some(Keyed::Stored(row)),
                Claim::InFlight => Some(Keyed::InFlight),
            };
            if let Some(refused) = refused {
                // Nothing was written; an aborted transaction (after a lock timeout) ends too.
                tx.rollback().await?;
                return Ok(refused);
            }
            tx.batch_execute(DEFAULT_LOCK_TIMEOUT).await?;
            let stmt = tx.prepare_cached(INSERT_WITH_KEY).await?;
            let row = tx
                .query_one(
                    &stmt,
                    &[
                        &new.title.as_str(),
                        &new.description.as_str(),
                        &new.status.as_str(),
                        &idempotency.key.as_str(),
                    ],
                )
                .await?;
            tx.commit().await?;
            Ok(Keyed::Inserted(row))
        })
        .await;
        match self.settle(client, outcome)? {
            Keyed::Inserted(row) => Ok(Created {
                task: task_from_row(&row)?,
                replayed: false,
            }),
            Keyed::Stored(row) => replay(&row, &idempotency.fingerprint),
            Keyed::InFlight => Err(RepoError::IdempotencyKeyInFlight),
        }
    }

    /// Says why a conditional write matched no row: the task is gone, or the condition failed.
    async fn refusal(&self, id: TaskId) -> Result<RepoError, RepoError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.query_timeout, async {
            let stmt = client.prepare_cached(EXISTS).await?;
            let row = client.query_one(&stmt, &[&id.get()]).await?;
            row.try_get::<_, bool>(0)
        })
        .await;
        let exists = self.settle(client, outcome)?;
        Ok(if exists {
            RepoError::PreconditionFailed
        } else {
            RepoError::NotFound
        })
    }
}

#[async_trait]
impl TaskRepository for PgTaskRepository {
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
        if let Some(idempotency) = idempotency {
            return self.create_keyed(new, idempotency).await;
        }
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.query_timeout, async {
            let stmt = client.prepare_cached(INSERT).await?;
            client
                .query_one(
                    &stmt,
                    &[
                        &new.title.as_str(),
                        &new.description.as_str(),
                        &new.status.as_str(),
                    ],
                )
                .await
        })
        .await;
        Ok(Created {
            task: task_from_row(&self.settle(client, outcome)?)?,
            replayed: false,
        })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get(&self, id: TaskId) -> Result<Task, RepoError> {
        // On the connection other point reads on this thread are using, if any: the queries
        // are pipelined (`shared_reads.rs`).
        let lease = match self.point_reads.join() {
            Some(lease) => lease,
            None => self.point_reads.start(self.client().await?),
        };
        let client = lease.client();
        let outcome = tokio::time::timeout(self.query_timeout, async {
            let stmt = client.prepare_cached(SELECT_BY_ID).await?;
            client.query_opt(&stmt, &[&id.get()]).await
        })
        .await;
        let row = match outcome {
            Ok(row) => row.map_err(errors::from_pg)?,
            Err(_) => {
                lease.break_off();
                return Err(self.timed_out(client.cancel_token()));
            }
        };
        match row {
            Some(row) => task_from_row(&row),
            None => Err(RepoError::NotFound),
        }
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
        let repo = self.clone();
        self.lists
            .read(query, move |query, opening| async move {
                repo.read_list(&query, opening).await
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self, patch))]
    async fn update(
        &self,
        id: TaskId,
        patch: TaskPatch,
        precondition: Precondition,
    ) -> Result<Task, RepoError> {
        match precondition {
            // Every update needs the row to exist, so `Exists` asks nothing more than `None`.
            Precondition::None | Precondition::Exists => {}
            Precondition::Version(v) => {
                return match self
                    .update_row(id, &patch, Steps::IfVersion(v.get()))
                    .await?
                {
                    Some(task) => Ok(task),
                    None => Err(self.refusal(id).await?),
                };
            }
            Precondition::Never => return Err(self.refusal(id).await?),
        }
        match self.combiner.arrive(id.get(), &patch) {
            Turn::Run => {
                let _running = Running { repo: self, id };
                self.update_row(id, &patch, Steps::One)
                    .await?
                    .ok_or(RepoError::NotFound)
            }
            // Bounded too: by twice what one update may take on its own. An update that gives
            // up is not written if its batch has not been formed yet (its caller is gone).
            Turn::Wait(answer) => match tokio::time::timeout(self.combined_wait, answer).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(RepoError::Unavailable(Box::new(combine::Abandoned))),
                Err(_) => Err(RepoError::Unavailable(Box::new(combine::WaitedTooLong(
                    self.combined_wait,
                )))),
            },
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn delete(&self, id: TaskId, precondition: Precondition) -> Result<(), RepoError> {
        let expected = match precondition {
            Precondition::None | Precondition::Exists => None,
            Precondition::Version(v) => Some(v.get()),
            Precondition::Never => return Err(self.refusal(id).await?),
        };

        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.query_timeout, async {
            match &expected {
                None => {
                    let stmt = client.prepare_cached(DELETE).await?;
                    client.execute(&stmt, &[&id.get()]).await
                }
                Some(version) => {
                    let stmt = client.prepare_cached(DELETE_IF_VERSION).await?;
                    client.execute(&stmt, &[&id.get(), version]).await
                }
            }
        })
        .await;
        match self.settle(client, outcome)? {
            0 if expected.is_some() => Err(self.refusal(id).await?),
            0 => Err(RepoError::NotFound),
            _ => Ok(()),
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn counts(&self) -> Result<StatusCounts, RepoError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.query_timeout, async {
            let stmt = client.prepare_cached(COUNTS).await?;
            client.query(&stmt, &[]).await
        })
        .await;
        let mut counts = StatusCounts::default();
        for row in self.settle(client, outcome)? {
            let status: &str = row.try_get(0).map_err(errors::from_pg)?;
            let n: i64 = row.try_get(1).map_err(errors::from_pg)?;
            let status = status
                .parse::<Status>()
                .map_err(|e| invalid_counter(status, e))?;
            // A single shard may be negative; a status's sum never is unless the counters broke.
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
            let client = self.client().await?;
            let outcome = tokio::time::timeout(self.query_timeout, async {
                let stmt = client.prepare_cached(PURGE_KEYS).await?;
                client.execute(&stmt, &[&age, &PURGE_BATCH]).await
            })
            .await;
            let n = self.settle(client, outcome)?;
            purged += n;
            // A short batch: nothing is left but keys other purgers are deleting right now.
            if n < PURGE_BATCH.unsigned_abs() {
                break;
            }
        }
        Ok(purged)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn ping(&self) -> Result<(), RepoError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.query_timeout, async {
            let stmt = client.prepare_cached("SELECT 1").await?;
            client.query_one(&stmt, &[]).await
        })
        .await;
        self.settle(client, outcome).map(drop)
    }
}

/// Where claiming an idempotency key got to.
enum Claim {
    /// This transaction holds the key now.
    Claimed,
    /// The key is stored, committed and not expired: this row of [`SELECT_KEY`].
    Stored(Row),
    /// Another transaction holds the key and did not commit within the lock timeout.
    InFlight,
}

/// How an idempotent create's transaction ended.
enum Keyed {
    /// The task was inserted and the key recorded with it: this row of [`task_columns!`].
    Inserted(Row),
    /// Nothing was written: the key is stored (this row of [`SELECT_KEY`]).
    Stored(Row),
    /// Nothing was written: another transaction holds the key.
    InFlight,
}

/// Claims `idempotency`'s key in `tx`, which runs under [`CLAIM_LOCK_TIMEOUT`].
async fn claim(
    tx: &Transaction<'_>,
    new: &NewTask,
    idempotency: &Idempotency,
) -> Result<Claim, tokio_postgres::Error> {
    let key = idempotency.key.as_str();
    let fingerprint = idempotency.fingerprint.as_bytes().as_slice();
    let ttl = micros(idempotency.ttl);
    let (title, description, status) = (
        new.title.as_str(),
        new.description.as_str(),
        new.status.as_str(),
    );
    // Between the statements the key may be purged or taken over by another create, which
    // sends this round again. A third round means the key keeps changing hands under concurrent
    // creates: "in flight" says that, and a retry gets a settled answer.
    for _ in 0..3 {
        let stmt = tx.prepare_cached(CLAIM_KEY).await?;
        match tx
            .query_opt(&stmt, &[&key, &fingerprint, &title, &description, &status])
            .await
        {
            Ok(Some(_)) => return Ok(Claim::Claimed),
            Ok(None) => {}
            Err(e) if is_lock_timeout(&e) => return Ok(Claim::InFlight),
            Err(e) => return Err(e),
        }
        let stmt = tx.prepare_cached(SELECT_KEY).await?;
        let Some(row) = tx.query_opt(&stmt, &[&key, &ttl]).await? else {
            continue;
        };
        if !row.try_get::<_, bool>(8)? {
            return Ok(Claim::Stored(row));
        }
        let stmt = tx.prepare_cached(TAKE_OVER_EXPIRED_KEY).await?;
        match tx
            .query_opt(
                &stmt,
                &[&key, &fingerprint, &title, &description, &status, &ttl],
            )
            .await
        {
            Ok(Some(_)) => return Ok(Claim::Claimed),
            Ok(None) => {}
            Err(e) if is_lock_timeout(&e) => return Ok(Claim::InFlight),
            Err(e) => return Err(e),
        }
    }
    Ok(Claim::InFlight)
}

/// `lock_timeout` fired. Only while claiming a key does this mean "in flight"; anywhere else it
/// stays `Unavailable` (see `errors`).
fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// The answer from a stored key: the snapshot when the request is the same, else a refusal.
fn replay(row: &Row, fingerprint: &RequestFingerprint) -> Result<Created, RepoError> {
    let stored: &[u8] = row.try_get(7).map_err(errors::from_pg)?;
    if stored != fingerprint.as_bytes() {
        return Err(RepoError::IdempotencyKeyReused);
    }
    Ok(Created {
        task: task_from_row(row)?,
        replayed: true,
    })
}

/// A duration in whole microseconds, as the statements take it. Saturating: an absurd duration
/// makes PostgreSQL refuse the arithmetic rather than wrap around here.
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

/// Which `UPDATE` [`PgTaskRepository::update_row`] runs.
enum Steps {
    /// One update, unconditional.
    One,
    /// One update, if the task is at this version.
    IfVersion(i64),
    /// This many unconditional updates, combined.
    Batch(i64),
}

/// Held by the update that runs for its task: when it ends, however it ends (its caller may go
/// away mid-statement), the updates that waited for it run next.
struct Running<'r> {
    repo: &'r PgTaskRepository,
    id: TaskId,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(waiters) = self.repo.combiner.next(self.id.get()) {
            self.repo.run_waiters(self.id, waiters);
        }
    }
}

/// Held by the background run of waiting updates: if it stops before its end (a panic, the
/// runtime shutting down), the updates still waiting for the task get an error instead of
/// waiting forever, and the task's next update runs again.
struct Abandon {
    combiner: Arc<Combiner>,
    id: Option<i64>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.combiner.abandon(id);
        }
    }
}

/// Reads a row of [`task_columns!`] into a `Task`, through the domain's constructors: a stored
/// value the domain would refuse is a bug, reported as `Unexpected` rather than served.
fn task_from_row(row: &Row) -> Result<Task, RepoError> {
    let id: i64 = row.try_get(0).map_err(errors::from_pg)?;
    let invalid = |field: &'static str,
                   source: Option<Box<dyn std::error::Error + Send + Sync>>| {
        RepoError::Unexpected(Box::new(InvalidRow { id, field, source }))
    };
    let title: String = row.try_get(1).map_err(errors::from_pg)?;
    let description: String = row.try_get(2).map_err(errors::from_pg)?;
    let status: &str = row.try_get(3).map_err(errors::from_pg)?;
    let created_at: DateTime<Utc> = row.try_get(4).map_err(errors::from_pg)?;
    let updated_at: DateTime<Utc> = row.try_get(5).map_err(errors::from_pg)?;
    let version: i64 = row.try_get(6).map_err(errors::from_pg)?;
    Ok(Task {
        id: TaskId::new(id).ok_or_else(|| invalid("id", None))?,
        title: Title::new(title).map_err(|e| invalid("title", Some(Box::new(e))))?,
        description: Description::new(description)
            .map_err(|e| invalid("description", Some(Box::new(e))))?,
        status: status
            .parse()
            .map_err(|e: tasklane_domain::StatusError| invalid("status", Some(Box::new(e))))?,
        created_at,
        updated_at,
        version: Version::new(version),
    })
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn list_sql_numbers_parameters_in_order() {
        assert_eq!(
            list_sql(false, SearchBy::No, false),
            "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
             ORDER BY created_at DESC, id DESC LIMIT $1"
        );
        assert_eq!(
            list_sql(true, SearchBy::Pattern, true),
            "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
             WHERE id = ANY(ARRAY(SELECT id FROM tasks \
             WHERE status = $1 AND (title_folded LIKE lower($2) ESCAPE '\\' \
             OR description_folded LIKE lower($2) ESCAPE '\\') AND (created_at, id) < ($3, $4) \
             ORDER BY created_at DESC, id DESC LIMIT $5))"
        );
        assert_eq!(
            list_sql(true, SearchBy::Probe, true),
            "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
             WHERE id = ANY(ARRAY(SELECT id FROM tasks \
             WHERE status = $1 AND (title_folded LIKE lower($2) \
             OR description_folded LIKE lower($2)) AND (strpos(title_folded, lower($3)) > 0 \
             OR strpos(description_folded, lower($3)) > 0) AND (created_at, id) < ($4, $5) \
             ORDER BY created_at DESC, id DESC LIMIT $6))"
        );
        assert_eq!(
            list_sql(false, SearchBy::Walk, true),
            "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
             WHERE id = ANY(ARRAY(SELECT id FROM tasks \
             WHERE (title_folded LIKE (SELECT lower($1::text)) \
             OR description_head LIKE (SELECT lower($1::text)) \
             OR (octet_length(description_head) >= 300 \
             AND (SELECT whole.description_folded FROM tasks AS whole WHERE whole.id = tasks.id) \
             LIKE (SELECT lower($1::text)))) AND (created_at, id) < ($2, $3) \
             ORDER BY created_at DESC, id DESC LIMIT (SELECT $4::bigint)))"
        );
        let mut shapes = std::collections::HashSet::new();
        for status in [false, true] {
            for search in SEARCHES {
                for cursor in [false, true] {
                    let i = list_sql_index(status, search, cursor);
                    assert_eq!(LIST_SQL[i], list_sql(status, search, cursor));
                    assert!(shapes.insert(i));
                }
            }
        }
        assert_eq!(shapes.len(), LIST_SQL.len());
        let trigrams = list_sql(false, SearchBy::FetchAll, false);
        assert!(
            trigrams.contains(
                "SELECT * FROM (SELECT id, title, description, status, created_at, updated_at, \
             version FROM tasks \
             WHERE (title_folded LIKE lower($1) OR description_folded LIKE lower($1)) AND \
             (strpos(title_folded, lower($2)) > 0 OR strpos(description_folded, lower($2)) > 0) \
             OFFSET 0) AS found ORDER BY created_at DESC, id DESC LIMIT $3"
            ),
            "{trigrams}"
        );
        let search_after = list_sql(false, SearchBy::Pattern, true);
        assert!(search_after.contains("LIKE lower($1) ") && search_after.contains("LIMIT $4))"));
    }

    /// The indexes serve every list statement: the order comes from an index (no sort) and the
    /// cursor is an index condition, so a deep page costs what the first does; search can use
    /// the trigram indexes. Checked on the real statements, with the planner told to avoid
    /// sequential scans (the test table is small enough that it would otherwise prefer them).
    #[tokio::test]
    async fn every_list_statement_is_served_by_an_index() {
        let db = tasklane_testkit::db::TestDb::new().await;
        let client = db.client().await;
        client
            .batch_execute(
                "INSERT INTO tasks (title, description, status) \
                 SELECT 'task ' || g, 'about ' || g, (ARRAY['todo', 'in_progress', 'done'])[1 + g % 3] \
                 FROM generate_series(1, 20000) AS g; \
                 ANALYZE tasks; \
                 SET enable_seqscan = off",
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = "done";
        let pattern = "%needle%";
        let text = "a needle";
        let at = Utc::now();
        let id = i64::MAX;
        let fetch = 11_i64;

        for mask in 0..20 {
            let (by_status, search, after) = (mask % 2 == 1, SEARCHES[mask / 2 % 5], mask >= 10);
            let by_search = search != SearchBy::No;
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
            if by_status {
                params.push(&status);
            }
            if by_search {
                params.push(&pattern);
            }
            if matches!(search, SearchBy::Probe | SearchBy::FetchAll) {
                params.push(&text);
            }
            if after {
                params.push(&at);
                params.push(&id);
            }
            params.push(&fetch);
            let sql = list_sql(by_status, search, after);
            let explain = || async {
                let rows = client
                    .query(&format!("EXPLAIN {sql}"), &params)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("\n")
            };

            // The plan with one of the planner's methods turned off.
            let explain_without = |method: &'static str| {
                let (client, explain) = (&client, &explain);
                async move {
                    client
                        .batch_execute(&format!("SET {method} = off"))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    let plan = explain().await;
                    client
                        .batch_execute(&format!("RESET {method}"))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    plan
                }
            };

            let plan = explain().await;
            assert!(!plan.contains("Seq Scan"), "{sql}\n{plan}");
            if by_search && !by_status && search != SearchBy::FetchAll {
                // Walking the list in order, a search tests the texts on the index alone (one
                // that fetches every row holding its trigrams never walks: below). The walk
                // statement does so on the index alone; the others, which test the whole
                // description, read the rows they pass.
                let walk = explain_without("enable_bitmapscan").await;
                let scan = if search == SearchBy::Walk {
                    "Index Only Scan using tasks_created_id_idx"
                } else {
                    "Index Scan using tasks_created_id_idx"
                };
                assert!(walk.contains(scan), "{sql}\n{walk}");
            }
            if search == SearchBy::Walk {
                if !by_status {
                    // PostgreSQL plans a prepared statement for its parameters on its first
                    // five runs, then keeps one generic plan if that costs no more: blind to the
                    // pattern and the limit, the walk's plans are all alike, so it does (seeing
                    // a pattern every task matches, or on 20,000 tasks the limit, it would not:
                    // its own plan would cost less), and that plan is the walk.
                    let args = if after {
                        "'%task%', now(), 9223372036854775807, 11"
                    } else {
                        "'%task%', 11"
                    };
                    let lines = |sql: String| {
                        let client = &client;
                        async move {
                            let rows = client
                                .simple_query(&sql)
                                .await
                                .unwrap_or_else(|e| panic!("{e}"));
                            rows.iter()
                                .filter_map(|m| match m {
                                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
                                    _ => None,
                                })
                                .map(str::to_owned)
                                .collect::<Vec<_>>()
                                .join("\n")
                        }
                    };
                    let runs = format!("EXECUTE walk({args}); ").repeat(6);
                    lines(format!("PREPARE walk AS {sql}; {runs}")).await;
                    let generic = lines(format!(
                        "EXPLAIN EXECUTE walk({args}); \
                         SELECT 'generic plans: ' || generic_plans FROM pg_prepared_statements \
                         WHERE name = 'walk'; DEALLOCATE walk"
                    ))
                    .await;
                    assert!(!generic.contains("generic plans: 0"), "{sql}\n{generic}");
                    assert!(
                        generic.contains("Index Only Scan using tasks_created_id_idx")
                            && !generic.contains("trgm")
                            && !generic.contains("Sort"),
                        "{sql}\n{generic}"
                    );
                }
                continue;
            }
            if !by_search {
                assert!(!plan.contains("Sort"), "{sql}\n{plan}");
                if after {
                    assert!(
                        plan.contains("Index Cond: ")
                            && plan.contains("ROW(created_at, id) < ROW("),
                        "{sql}\n{plan}"
                    );
                }
            } else if !by_status && !after {
                if search == SearchBy::FetchAll {
                    // The order is kept out of the lookup's plan: no walk of the list in order.
                    // (Which index it then takes depends on the table's size: on a small one,
                    // a bitmap of the list index may do; on the benchmark's 100,000, the trigram
                    // indexes, docs/PERFORMANCE.md section 15.)
                    assert!(
                        plan.contains("Sort Key: ")
                            && !plan.contains("Index Only Scan")
                            && !plan.contains("Index Scan using tasks_created_id_idx"),
                        "{sql}\n{plan}"
                    );
                    continue;
                }
                // Make the ordered index scan unattractive too: the text search must be able to
                // use the trigram indexes on both columns.
                let plan = explain_without("enable_indexscan").await;
                assert!(
                    plan.contains("tasks_title_folded_trgm_idx"),
                    "{sql}\n{plan}"
                );
                assert!(
                    plan.contains("tasks_description_folded_trgm_idx"),
                    "{sql}\n{plan}"
                );
            }
        }
    }
}
