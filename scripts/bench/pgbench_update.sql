-- The write side of the 90/10 mix, alone: the statement a PUT without If-Match runs (UPDATE in
-- crates/tasklane-postgres/src/repository.rs), prepared (-M prepared), on the same rows the
-- mix writes (ids 1-3 of the 3-task database) with the statuses scripts/bench/mix.lua sends.
-- The counter trigger fires as it does for the API. Ten times this rate is what the mix could
-- reach if its reads cost nothing and each PUT were its own UPDATE: the ceiling PostgreSQL
-- would put on it on this machine. Tasklane combines the PUTs of a task that arrive while one
-- of it runs (crates/tasklane-postgres/src/combine.rs), so the mix can pass it.
\set id random(1, 3)
\set s random(1, 3)
UPDATE tasks SET title = COALESCE(NULL::text, title), description = COALESCE(NULL::text, description), status = COALESCE((ARRAY['todo', 'in_progress', 'done'])[:s], status), version = version + 1, updated_at = GREATEST(now(), updated_at + interval '1 microsecond') WHERE id = :id RETURNING id, title, description, status, created_at, updated_at, version;
