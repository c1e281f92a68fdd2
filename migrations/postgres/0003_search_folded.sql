-- Case-insensitive search without lower-casing every row it reads.
--
-- Applied by tasklane_postgres::migrate, which runs each file in its own transaction and records
-- its checksum: never edit this file once released; add a new numbered file instead.
--
-- `x ILIKE p` is PostgreSQL's `lower(x) LIKE lower(p)` (like.c: for a multibyte encoding or a
-- non-C locale it lower-cases both, then matches), and that `lower()` of every title and
-- description a search reads was most of its cost: about 1.4 us a column and row in a C.UTF-8
-- database, against about 0.3 us for `LIKE` on text already lower-cased (docs/PERFORMANCE.md).
-- So the lower-cased texts are kept beside the originals, written with them by PostgreSQL
-- itself (generated columns: no writer can let them drift), and searches match
-- `title_folded LIKE lower($p) OR description_folded LIKE lower($p)`: the same rows as before.
-- They are never returned to clients. The cost: a second copy of each text in the row.
--
-- Adding a stored generated column rewrites the table once, under an exclusive lock.
ALTER TABLE tasks
    ADD COLUMN title_folded TEXT GENERATED ALWAYS AS (lower(title)) STORED,
    ADD COLUMN description_folded TEXT GENERATED ALWAYS AS (lower(description)) STORED;

-- The trigram indexes follow the texts searches now read. gin_trgm_ops serves LIKE as it served
-- ILIKE; for patterns of three characters or more the two become a BitmapOr.
DROP INDEX tasks_title_trgm_idx;
DROP INDEX tasks_description_trgm_idx;
CREATE INDEX tasks_title_folded_trgm_idx ON tasks USING gin (title_folded gin_trgm_ops);
CREATE INDEX tasks_description_folded_trgm_idx ON tasks USING gin (description_folded gin_trgm_ops);
