-- The list's index carries the first 300 characters of each lower-cased description, not all of
-- it: a task with a long description could not be written.
--
-- Applied by tasklane_postgres::migrate, which runs each file in its own transaction and records
-- its checksum: never edit this file once released; add a new numbered file instead.
--
-- Migration 0004 put both lower-cased texts in `tasks_created_id_idx`, whole. A B-tree entry must
-- fit in a third of a page (2,704 bytes, after compression), and a description may be 10,000
-- characters: any description of more than about 2,600 bytes that does not compress well (a
-- pasted log, an encoded blob, 3,000 random hex digits) made the INSERT or UPDATE fail ("index
-- row size exceeds btree version 4 maximum 2704"), a 500 for valid input.
--
-- Now the index carries `description_head`, the first 300 characters of the lower-cased
-- description (PostgreSQL keeps it, a generated column like the others), beside the title's
-- (at most 255 characters): at most 2,220 bytes of text whatever the characters. A search
-- walking the list tests the title and the head on the index alone, as before; only a task whose
-- head is 300 characters long (its description may go on) and does not match there has its whole
-- description read from the table (repository.rs, `list_sql`).
--
-- Adding a stored generated column rewrites the table once, and building the index blocks writes
-- (not reads) for as long as it takes: a few seconds for a million tasks.
ALTER TABLE tasks
    ADD COLUMN description_head TEXT GENERATED ALWAYS AS (left(lower(description), 300)) STORED;

CREATE INDEX tasks_created_id_heads_idx ON tasks (created_at DESC, id DESC)
    INCLUDE (title_folded, description_head);
DROP INDEX tasks_created_id_idx;
ALTER INDEX tasks_created_id_heads_idx RENAME TO tasks_created_id_idx;
