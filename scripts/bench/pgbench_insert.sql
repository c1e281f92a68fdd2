-- The limit of the create scenario: the statement a create without Idempotency-Key runs
-- (INSERT in crates/tasklane-postgres/src/repository.rs), prepared (-M prepared), with the
-- values scripts/bench/post.lua sends, as pgbench variables (-D) so that they are parameters.
-- The table's statement-level counter trigger fires as it does for the API.
INSERT INTO tasks (title, description, status) VALUES (:title, :description, :status) RETURNING id, title, description, status, created_at, updated_at, version;
