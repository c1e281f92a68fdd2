-- POST /api/tasks: a create, the same body every time (scripts/bench/pgbench_insert.sql runs the
-- same INSERT ... RETURNING with the same values, as this scenario's limit).
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"title":"bench task","description":"created by the benchmark","status":"todo"}'
