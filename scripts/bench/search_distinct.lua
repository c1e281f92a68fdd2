-- The search scenario's ten texts (search.lua), each request's letters in a random case: the
-- same work for the store (the search is case-insensitive, so each finds what search.lua's text
-- finds, the same way), but no two reads in flight are likely to be of the same query, so none
-- joins another (a list read joins only an identical one waiting to start, keyed by its exact
-- text: crates/tasklane-postgres/src/joined_lists.rs). What the store does per search, without
-- the joining that search.lua's ten repeated texts get under load.
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

local terms = {
  "budget", "Delta", "central%20office", "task%204242", "nomatch-xyz", "REVIEW%20ALPHA",
  "kilo", "invoice", "east", "task%2099",
}
local i = 0

function init(args)
  bench_seed()
  i = math.random(0, #terms - 1)
end

-- Each letter upper- or lower-case at random ("%20" and digits stay as they are).
local function recase(t)
  return (t:gsub("%a", function(c)
    if math.random(2) == 1 then return c:upper() end
    return c:lower()
  end))
end

function request()
  i = i % #terms + 1
  return wrk.format("GET", "/api/tasks?q=" .. recase(terms[i]))
end
