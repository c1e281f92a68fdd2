-- The pair of migrations/postgres/0005_status_counts_follow_rows.sql, which moves PostgreSQL's
-- status counters with a row trigger that fires only when an update changes the status.
--
-- Nothing changes here: the embedded store's counters have always moved that way (0001's
-- `tasks_count_update`, `AFTER UPDATE OF status ... WHEN OLD.status IS NOT NEW.status`). This
-- file keeps the two stores' schema versions in step.
SELECT 1;
