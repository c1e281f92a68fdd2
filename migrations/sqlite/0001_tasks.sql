-- Tasks, the indexes that serve the list and its status filter, and per-status counters kept in
-- the same transaction as every write: the SQLite twin of migrations/postgres/0001_tasks.sql.
--
-- Applied by tasklane_sqlite::migrate, which runs every pending file inside one
-- `BEGIN IMMEDIATE` transaction and records its checksum: never edit this file once released;
-- add a new numbered file instead. A file here must not contain BEGIN, COMMIT or the PRAGMAs
-- that cannot run inside a transaction (journal_mode, foreign_keys): the adapter sets those on
-- every connection it opens.

-- The same table as on PostgreSQL, in SQLite's terms:
-- - AUTOINCREMENT, so that an id is never handed out again, not even the highest one after it
--   was deleted (plain INTEGER PRIMARY KEY would reuse it), as PostgreSQL's identity does;
-- - timestamps as INTEGER microseconds since the Unix epoch, UTC: PostgreSQL's TIMESTAMPTZ
--   precision, and they sort as numbers;
-- - STRICT, so that a value of the wrong type is refused instead of stored as it comes.
-- The checks repeat the domain's rules as a last line of defence (length() counts characters,
-- and trim() strips spaces, as PostgreSQL's char_length and btrim do); the domain checks first
-- and says which field is wrong.
CREATE TABLE tasks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    title       TEXT NOT NULL
                CONSTRAINT tasks_title_length CHECK (length(title) <= 255)
                CONSTRAINT tasks_title_not_blank CHECK (trim(title) <> ''),
    description TEXT NOT NULL DEFAULT ''
                CONSTRAINT tasks_description_length CHECK (length(description) <= 10000),
    status      TEXT NOT NULL DEFAULT 'todo'
                CONSTRAINT tasks_status_known CHECK (status IN ('todo', 'in_progress', 'done')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1
                CONSTRAINT tasks_version_positive CHECK (version >= 1),
    CONSTRAINT tasks_updated_after_created CHECK (updated_at >= created_at)
) STRICT;

-- The list order is (created_at DESC, id DESC) and pages continue with
-- `(created_at, id) < (cursor)`: these two indexes give every page, filtered by status or not,
-- in index order without a sort, however deep the cursor. Text search has no index to use
-- (SQLite has no trigram index); it filters the rows these indexes yield in order.
CREATE INDEX tasks_created_id_idx ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_status_created_id_idx ON tasks (status, created_at DESC, id DESC);

-- Per-status counts in O(1): one row per status. SQLite has one writer at a time, so a single
-- row per status is no hot spot (PostgreSQL's table needs shards for that).
CREATE TABLE task_status_counts (
    status TEXT PRIMARY KEY NOT NULL
           CONSTRAINT task_status_counts_status_known CHECK (status IN ('todo', 'in_progress', 'done')),
    n      INTEGER NOT NULL DEFAULT 0
           CONSTRAINT task_status_counts_not_negative CHECK (n >= 0)
) STRICT, WITHOUT ROWID;

INSERT INTO task_status_counts (status) VALUES ('todo'), ('in_progress'), ('done');

-- Row triggers run inside the statement that fires them, so the counters change in the same
-- transaction as the tasks. SQLite has no TRUNCATE: even `DELETE FROM tasks` fires these per row.
CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks
BEGIN
    UPDATE task_status_counts SET n = n + 1 WHERE status = NEW.status;
END;

CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks
BEGIN
    UPDATE task_status_counts SET n = n - 1 WHERE status = OLD.status;
END;

-- An update that changes no status touches no counter.
CREATE TRIGGER tasks_count_update AFTER UPDATE OF status ON tasks
WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE task_status_counts SET n = n - 1 WHERE status = OLD.status;
    UPDATE task_status_counts SET n = n + 1 WHERE status = NEW.status;
END;
