-- The idempotency keys of creates (`Idempotency-Key` on POST /api/tasks): the SQLite twin of
-- migrations/postgres/0002_idempotency_keys.sql. Each key is kept with the fingerprint of the
-- request it came with and a snapshot of the task that request created, so that a retry gets
-- the first answer even after the task was changed or deleted.
--
-- Applied by tasklane_sqlite::migrate (see 0001_tasks.sql): never edit this file once released.

-- A create writes its key in the same `BEGIN IMMEDIATE` transaction as the task, so writers are
-- serialized and a key row is always complete. Timestamps are microseconds since the Unix
-- epoch, UTC, as in `tasks`. No foreign key to tasks: the snapshot must outlive the task.
-- A rowid table rather than WITHOUT ROWID: a row may hold a 10,000-character description.
CREATE TABLE task_idempotency_keys (
    key             TEXT PRIMARY KEY NOT NULL
                    CONSTRAINT task_idempotency_keys_key_length
                    CHECK (length(CAST(key AS BLOB)) BETWEEN 1 AND 255),
    -- SHA-256 of the request, computed by the domain.
    fingerprint     BLOB NOT NULL
                    CONSTRAINT task_idempotency_keys_fingerprint_length
                    CHECK (length(fingerprint) = 32),
    task_id         INTEGER NOT NULL,
    title           TEXT NOT NULL,
    description     TEXT NOT NULL,
    status          TEXT NOT NULL
                    CONSTRAINT task_idempotency_keys_status_known
                    CHECK (status IN ('todo', 'in_progress', 'done')),
    -- The task's created_at (and updated_at, as created).
    task_created_at INTEGER NOT NULL,
    -- When the key was stored: it expires 24 h later, and the cleanup removes it after that.
    stored_at       INTEGER NOT NULL
) STRICT;

-- The cleanup deletes the oldest keys in small batches, in this index's order.
CREATE INDEX task_idempotency_keys_stored_at_idx ON task_idempotency_keys (stored_at);
