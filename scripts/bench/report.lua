-- Shared by every scenario script (loaded with dofile): at the end of a run, one line that
-- scripts/bench.sh parses. Errors are responses with a status of 400 or more (wrk's "non-2xx or
-- 3xx") plus socket errors (connect, read, write, timeout).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d status_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end

-- Every script reads its own arguments with this: `wrk ... -- key=value ...`.
function bench_args(args)
  local t = {}
  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if k then t[k] = v end
  end
  return t
end

-- A different random sequence per wrk thread.
local seeded = false
function bench_seed()
  if not seeded then
    math.randomseed(os.time() + math.floor(os.clock() * 1e6) + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 1000003)
    seeded = true
  end
end
