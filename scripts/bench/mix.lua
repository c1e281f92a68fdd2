-- The 90/10 read/write mix: nine GETs of the list (the path given, default /api/tasks) to one
-- PUT of a random task in [lo, hi], interleaved (each write invalidates the cached list that
-- the readers around it are reading). Args: lo=N hi=N [path=/api/tasks]
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

local reqs, n, i = {}, 1000, 0
local statuses = { "todo", "in_progress", "done" }

function init(args)
  bench_seed()
  local a = bench_args(args)
  local lo, hi = tonumber(a.lo), tonumber(a.hi)
  local read = wrk.format("GET", a.path or "/api/tasks")
  local headers = { ["Content-Type"] = "application/json" }
  for k = 1, n do
    if k % 10 == 0 then
      local body = '{"status":"' .. statuses[math.random(1, 3)] .. '"}'
      reqs[k] = wrk.format("PUT", "/api/tasks/" .. math.random(lo, hi), headers, body)
    else
      reqs[k] = read
    end
  end
  -- Threads start at different points of the cycle.
  i = math.random(0, n - 1)
end

function request()
  i = i % n + 1
  return reqs[i]
end
