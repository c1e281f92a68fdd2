-- PUT /api/tasks/{id} for random ids in [lo, hi], setting one of the three statuses (no
-- If-Match: last writer wins). 4,096 requests formatted up front, then cycled.
-- Args: lo=N hi=N
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

local reqs, n, i = {}, 4096, 0
local statuses = { "todo", "in_progress", "done" }

function init(args)
  bench_seed()
  local a = bench_args(args)
  local lo, hi = tonumber(a.lo), tonumber(a.hi)
  local headers = { ["Content-Type"] = "application/json" }
  for k = 1, n do
    local body = '{"status":"' .. statuses[math.random(1, 3)] .. '"}'
    reqs[k] = wrk.format("PUT", "/api/tasks/" .. math.random(lo, hi), headers, body)
  end
end

function request()
  i = i % n + 1
  return reqs[i]
end
