-- The pair of migrations/postgres/0004_list_index_carries_folded_texts.sql, which lets a
-- PostgreSQL search walking the list in order test the lower-cased texts on the list's index.
--
-- Nothing changes here: the embedded store keeps no lower-cased copies (see 0003). This file
-- keeps the two stores' schema versions in step.
SELECT 1;
