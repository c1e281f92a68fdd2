-- The pair of migrations/postgres/0003_search_folded.sql, which keeps lower-cased copies of the
-- title and description so that PostgreSQL's search need not lower-case every row it reads.
--
-- Nothing changes here. The embedded store searches with its own function,
-- `tasklane_icontains` (crates/tasklane-sqlite/src/search.rs), which folds case as PostgreSQL's
-- `lower()` does; copies kept by generated columns would need that function on every
-- connection that writes the table, the sqlite3 shell's included. This file keeps the two
-- stores' schema versions in step.
SELECT 1;
