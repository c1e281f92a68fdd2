-- The idempotency keys of creates (`Idempotency-Key` on POST /api/tasks): each with the
-- fingerprint of the request it came with and a snapshot of the task that request created, so
-- that a retry gets the first answer even after the task was changed or deleted.
--
-- Applied by tasklane_postgres::migrate, which runs each file in its own transaction and records
-- its checksum: never edit this file once released; add a new numbered file instead.

-- A row is inserted first in a create's transaction, which claims the key: a second transaction
-- inserting the same key waits on the first (the adapter bounds that wait with lock_timeout and
-- answers "in flight"), then sees its committed row. `task_id` is NULL only inside that
-- transaction, between the claim and the task's insert; no committed row has it NULL.
-- No foreign key to tasks: the snapshot must outlive the task.
CREATE TABLE task_idempotency_keys (
    key             TEXT COLLATE "C" PRIMARY KEY
                    CONSTRAINT task_idempotency_keys_key_length
                    CHECK (octet_length(key) BETWEEN 1 AND 255),
    -- SHA-256 of the request, computed by the domain.
    fingerprint     BYTEA NOT NULL
                    CONSTRAINT task_idempotency_keys_fingerprint_length
                    CHECK (octet_length(fingerprint) = 32),
    task_id         BIGINT,
    title           VARCHAR(255) NOT NULL,
    description     TEXT NOT NULL,
    status          TEXT NOT NULL
                    CONSTRAINT task_idempotency_keys_status_known
                    CHECK (status IN ('todo', 'in_progress', 'done')),
    -- The task's created_at (and updated_at, as created).
    task_created_at TIMESTAMPTZ NOT NULL,
    -- When the key was stored: it expires 24 h later, and the cleanup removes it after that.
    stored_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The cleanup deletes the oldest keys in small batches, in this index's order.
CREATE INDEX task_idempotency_keys_stored_at_idx ON task_idempotency_keys (stored_at);
