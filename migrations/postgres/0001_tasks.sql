-- Tasks, the indexes that serve the list, its filters and text search, and per-status counters
-- kept in the same transaction as every write.
--
-- Applied by tasklane_postgres::migrate, which runs each file in its own transaction and records
-- its checksum: never edit this file once released; add a new numbered file instead.

-- Trigram indexes let `ILIKE '%text%'` use an index instead of scanning every row. pg_trgm is a
-- trusted extension (PostgreSQL 13+), so a database owner without superuser may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- The seed's table, done properly: a 64-bit identity the client cannot set, no NULLs where the
-- domain has none, a closed set of statuses, time zones kept, and a version for optimistic
-- concurrency (ETag / If-Match). The checks repeat the domain's rules as a last line of defence;
-- the domain checks first and says which field is wrong.
CREATE TABLE tasks (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title       VARCHAR(255) NOT NULL
                CONSTRAINT tasks_title_not_blank CHECK (btrim(title) <> ''),
    description TEXT NOT NULL DEFAULT ''
                CONSTRAINT tasks_description_length CHECK (char_length(description) <= 10000),
    status      TEXT NOT NULL DEFAULT 'todo'
                CONSTRAINT tasks_status_known CHECK (status IN ('todo', 'in_progress', 'done')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    version     BIGINT NOT NULL DEFAULT 1
                CONSTRAINT tasks_version_positive CHECK (version >= 1),
    CONSTRAINT tasks_updated_after_created CHECK (updated_at >= created_at)
);

-- The list order is (created_at DESC, id DESC) and pages continue with
-- `(created_at, id) < (cursor)`: these two indexes give every page, filtered by status or not,
-- in index order without a sort, however deep the cursor.
CREATE INDEX tasks_created_id_idx ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_status_created_id_idx ON tasks (status, created_at DESC, id DESC);

-- Case-insensitive substring search: `title ILIKE $p OR description ILIKE $p` becomes a BitmapOr
-- of these two (for patterns of three characters or more).
CREATE INDEX tasks_title_trgm_idx ON tasks USING gin (title gin_trgm_ops);
CREATE INDEX tasks_description_trgm_idx ON tasks USING gin (description gin_trgm_ops);

-- Per-status counts in O(1). One row per (status, shard): a writer only touches the shard chosen
-- by its backend's pid, so concurrent writers on different connections do not queue on one hot
-- row. A shard's count may go negative (a task created through one connection and deleted
-- through another); only the sum per status means anything.
CREATE TABLE task_status_counts (
    status TEXT NOT NULL
           CONSTRAINT task_status_counts_status_known CHECK (status IN ('todo', 'in_progress', 'done')),
    shard  SMALLINT NOT NULL
           CONSTRAINT task_status_counts_shard_range CHECK (shard >= 0 AND shard < 16),
    n      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (status, shard)
);

INSERT INTO task_status_counts (status, shard)
SELECT s.status, g.shard
FROM unnest(ARRAY['todo', 'in_progress', 'done']) AS s (status)
CROSS JOIN generate_series(0, 15) AS g (shard);

-- Statement-level triggers with transition tables: one statement, whatever number of rows it
-- writes, nets its changes per status and then updates at most one counter row per status, in
-- status order. Every writer therefore locks counter rows in the same order, so two transactions
-- moving tasks in opposite directions (todo -> done and done -> todo) cannot deadlock.
CREATE FUNCTION task_status_counts_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_shard CONSTANT SMALLINT := pg_backend_pid() % 16;
    r RECORD;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR r IN
            SELECT status, count(*) AS delta FROM new_rows
            GROUP BY status ORDER BY status COLLATE "C"
        LOOP
            UPDATE task_status_counts SET n = n + r.delta
            WHERE status = r.status AND shard = v_shard;
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR r IN
            SELECT status, count(*) AS delta FROM old_rows
            GROUP BY status ORDER BY status COLLATE "C"
        LOOP
            UPDATE task_status_counts SET n = n - r.delta
            WHERE status = r.status AND shard = v_shard;
        END LOOP;
    ELSIF TG_OP = 'UPDATE' THEN
        -- An update that changes no status nets to zero everywhere and touches no counter.
        FOR r IN
            SELECT status, sum(delta) AS delta
            FROM (
                SELECT status, -1 AS delta FROM old_rows
                UNION ALL
                SELECT status, 1 AS delta FROM new_rows
            ) AS changes
            GROUP BY status HAVING sum(delta) <> 0 ORDER BY status COLLATE "C"
        LOOP
            UPDATE task_status_counts SET n = n + r.delta
            WHERE status = r.status AND shard = v_shard;
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_count_insert
    AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_status_counts_apply();

CREATE TRIGGER tasks_count_delete
    AFTER DELETE ON tasks REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_status_counts_apply();

CREATE TRIGGER tasks_count_update
    AFTER UPDATE ON tasks REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_status_counts_apply();

-- TRUNCATE fires no row or statement DML triggers; without this one it would leave the counters
-- wrong. It holds an exclusive lock on tasks, so no other writer is in the middle of counting.
CREATE FUNCTION task_status_counts_reset() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE task_status_counts SET n = 0 WHERE n <> 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_count_truncate
    AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_status_counts_reset();
