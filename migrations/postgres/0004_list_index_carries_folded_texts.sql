-- The list's index carries the lower-cased texts, so that a search walking the list in order
-- filters on the index alone.
--
-- Applied by tasklane_postgres::migrate, which runs each file in its own transaction and records
-- its checksum: never edit this file once released; add a new numbered file instead.
--
-- A search whose matches are frequent among the newest tasks walks `tasks_created_id_idx` in
-- list order and tests every row it passes, and it may pass tens of thousands of them (after
-- many tasks that do not match were added). Reading each row's texts from the table cost about
-- 0.75 us a row; read from the index (an index-only scan: the table is not visited for pages
-- the visibility map says are all-visible), about 0.37 us (docs/PERFORMANCE.md, section 11).
-- The search statement finds the ids of its page this way and only then reads those rows
-- (repository.rs, `list_sql`). The cost: the index holds a copy of both folded texts (about
-- twice its size), written with every row version.
--
-- Building the index blocks writes to the table (not reads) for as long as it takes: a few
-- seconds for a million tasks.
CREATE INDEX tasks_created_id_folded_idx ON tasks (created_at DESC, id DESC)
    INCLUDE (title_folded, description_folded);
DROP INDEX tasks_created_id_idx;
ALTER INDEX tasks_created_id_folded_idx RENAME TO tasks_created_id_idx;
