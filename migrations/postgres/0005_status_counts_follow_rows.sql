-- An update moves a task between status counters only when it changes the task's status: a
-- row-level trigger that fires only then (`WHEN`) replaces the statement-level one of 0001.
--
-- Applied by tasklane_postgres::migrate, which runs each file in its own transaction and records
-- its checksum: never edit this file once released; add a new numbered file instead.
--
-- The statement-level trigger captured every updated row's old and new versions into transition
-- tables and grouped them, for every UPDATE, status change or not: about a quarter of
-- PostgreSQL's time in the benchmark's 90/10 mix, where every write is a one-row UPDATE
-- (docs/PERFORMANCE.md, section 17). A title or description edit, or a write of the same status,
-- now runs no trigger at all, and a status change runs two one-row UPDATEs of its shard's
-- counters. Inserts and deletes keep their statement-level triggers: bulk loads count their
-- rows once per statement.
--
-- Deadlocks: the two counters of a change are updated in the order of their statuses, as the
-- statement-level triggers do, so the one-row updates Tasklane runs never wait for each other in
-- opposite orders. A multi-row UPDATE run by hand moves counters row by row, in the order the
-- rows are updated; two such statements (or one and a Tasklane update) in the same shard may
-- then deadlock, and PostgreSQL cancels one of them, which changes nothing.
CREATE FUNCTION task_status_counts_move() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_shard CONSTANT SMALLINT := pg_backend_pid() % 16;
BEGIN
    IF OLD.status COLLATE "C" < NEW.status COLLATE "C" THEN
        UPDATE task_status_counts SET n = n - 1 WHERE status = OLD.status AND shard = v_shard;
        UPDATE task_status_counts SET n = n + 1 WHERE status = NEW.status AND shard = v_shard;
    ELSE
        UPDATE task_status_counts SET n = n + 1 WHERE status = NEW.status AND shard = v_shard;
        UPDATE task_status_counts SET n = n - 1 WHERE status = OLD.status AND shard = v_shard;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER tasks_count_update ON tasks;

CREATE TRIGGER tasks_count_update
    AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION task_status_counts_move();
