-- GET of wrk's URL, the same request every time; optional `header=Name: value` arguments
-- (used for If-None-Match). Args: [header=...]
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

function init(args)
  for _, a in ipairs(args) do
    local name, value = a:match("^header=([^:]+):%s*(.*)$")
    if name then wrk.headers[name] = value end
  end
end
