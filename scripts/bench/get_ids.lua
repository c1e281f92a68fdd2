-- GET /api/tasks/{id} for random ids in [lo, hi] (4,096 requests formatted up front, then
-- cycled, so that wrk spends its time sending, not formatting). `etag=` adds If-None-Match
-- with that value (every task in the range must have it: fresh tasks are all "v1").
--
-- Each thread draws the same ids in every wrk run (its seed is its number), so the warm-up
-- requests exactly the ids the measured runs will: a warm-up of other ids warmed nothing for
-- them, and a measured 304 run then began by reading ~6,500 of its 8,192 ids from PostgreSQL
-- (a task's first revalidation caches its version; PERFORMANCE.md section 31).
-- Args: lo=N hi=N [etag=...]
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

local reqs, n, i = {}, 4096, 0

local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  math.randomseed(7919 * tid)
  local a = bench_args(args)
  local lo, hi = tonumber(a.lo), tonumber(a.hi)
  local headers = {}
  if a.etag then headers["If-None-Match"] = a.etag end
  for k = 1, n do
    reqs[k] = wrk.format("GET", "/api/tasks/" .. math.random(lo, hi), headers)
  end
end

function request()
  i = i % n + 1
  return reqs[i]
end
