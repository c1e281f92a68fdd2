-- The pair of migrations/postgres/0006_list_index_carries_description_heads.sql, which bounds
-- the size of the PostgreSQL list index's entries so that a long description can be written.
--
-- Nothing changes here: SQLite's indexes have no such limit, and the embedded store keeps no
-- lower-cased copies (see 0003). This file keeps the two stores' schema versions in step.
SELECT 1;
