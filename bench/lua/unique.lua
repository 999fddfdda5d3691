-- Every request a new key:  -s unique.lua -- TEMPLATE START
-- TEMPLATE contains "{id}", replaced by START, START+1, START+2, ... (one wrk thread: -t1).
-- (wrk's script check calls request() once and discards it: START itself is never sent.)
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup = bench_setup
done = bench_done

local template, next_id

function init(args)
  template = args[1]
  next_id = tonumber(args[2])
end

function request()
  local path = template:gsub("{id}", tostring(next_id))
  next_id = next_id + 1
  return wrk.format("GET", path)
end
