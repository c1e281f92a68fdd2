-- DELETE /api/tasks/{id}, each id once: thread t of `threads` deletes from, from + t,
-- from + t + threads, ... The warm-up (BENCH_PHASE=warmup) takes ids from `warmup_from` instead,
-- so the measured run finds every id it asks for still there (a 404 would count as an error).
-- Args: from=N warmup_from=N threads=N
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

local counter = 1
function setup(thread)
  thread:set("tid", counter - 1)
  counter = counter + 1
end

local next_id, stride

function init(args)
  local a = bench_args(args)
  local from = tonumber(a.from)
  if os.getenv("BENCH_PHASE") == "warmup" then from = tonumber(a.warmup_from) end
  stride = tonumber(a.threads)
  next_id = from + tid
end

function request()
  local id = next_id
  next_id = next_id + stride
  return wrk.format("DELETE", "/api/tasks/" .. id)
end
