-- Static URL (wrk's fast path: no request()/response() in Lua); only reports numbers.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
setup = bench_setup
done = bench_done
