-- GET /api/tasks?q=... over the 100,000-task table, rotating through search texts of every
-- selectivity: common words (1 task in 5 to 1 in 13), a phrase, a number that matches about a
-- hundred tasks, and a text that matches nothing (the worst case for a scan in list order).
-- Mixed case: the search is case-insensitive.
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

local terms = {
  "budget", "Delta", "central%20office", "task%204242", "nomatch-xyz", "REVIEW%20ALPHA",
  "kilo", "invoice", "east", "task%2099",
}
local reqs, i = {}, 0

function init(args)
  bench_seed()
  for k, t in ipairs(terms) do
    reqs[k] = wrk.format("GET", "/api/tasks?q=" .. t)
  end
  i = math.random(0, #terms - 1)
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
