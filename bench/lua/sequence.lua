-- Replays a file of request paths exactly, in order, then stops:
--   -s sequence.lua -- FILE N DONE_FILE
-- Sends the first N lines of FILE (one path per line), counts each answer by its X-Cache
-- header (HIT, MISS, COALESCED, STALE, BYPASS, or "none") and by status class, and stops
-- the thread once N answers are in; then it creates DONE_FILE, on which bench/run.py sends
-- wrk SIGINT (thread:stop() ends the load, but wrk itself would sleep out -d; on SIGINT it
-- reports the real elapsed time). Requests past N (connections still open while the last
-- answers arrive) go to /_bloxproxy/healthz, which touches neither cache nor upstream and
-- is not counted. One wrk thread (-t1).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup = bench_setup
done = bench_done

local paths = {}
local total, answered = 0, 0
local done_file
-- wrk calls request() once on thread 0 right after init() to check the script
-- (script_verify_request) and throws that request away: start at -1 so the check takes
-- slot 0 and the first request sent is line 1. Hence one wrk thread (-t1).
local sent = -1

function init(args)
  local n = tonumber(args[2])
  done_file = args[3]
  for line in io.lines(args[1]) do
    if #paths >= n then break end
    if #line > 0 then table.insert(paths, line) end
  end
  total = #paths
end

function request()
  sent = sent + 1
  if sent >= 1 and sent <= total then
    return wrk.format("GET", paths[sent])
  end
  return wrk.format("GET", "/_bloxproxy/healthz")
end

function response(status, headers, body)
  local xc = headers["X-Cache"] or headers["x-cache"]
  if xc == nil and status == 200 and body and body:sub(1, 10) == '{"status":' then
    return  -- a healthz answer after the sequence: not counted
  end
  answered = answered + 1
  bench_count("xcache_" .. (xc or "none"))
  bench_count("status_" .. tostring(status))
  if answered == total then
    wrk.thread:stop()
    if done_file then
      local f = io.open(done_file, "w")
      if f then f:write("done\n"); f:close() end
    end
  end
end
