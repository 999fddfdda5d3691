-- Shared by the bench's wrk scripts: collect per-thread counters and print one machine-
-- readable line at the end:  BENCH_JSON {"requests":..,"duration_us":..,"p50_us":..,...}
-- Loaded with dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua").

local threads = {}

function bench_setup(thread)
  table.insert(threads, thread)
end

-- per-thread counters (read back in done() through thread:get)
counts = {}

function bench_count(name)
  counts[name] = (counts[name] or 0) + 1
end

local function encode(value)
  local t = type(value)
  if t == "number" then
    if value ~= value or value == math.huge or value == -math.huge then return "null" end
    return string.format("%.17g", value)
  elseif t == "string" then
    return '"' .. value:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  elseif t == "table" then
    local parts = {}
    for k, v in pairs(value) do
      table.insert(parts, encode(tostring(k)) .. ":" .. encode(v))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "boolean" then
    return tostring(value)
  end
  return "null"
end

function bench_done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    if c then
      for k, v in pairs(c) do merged[k] = (merged[k] or 0) + v end
    end
  end
  local e = summary.errors
  local out = {
    requests = summary.requests,
    duration_us = summary.duration,
    bytes = summary.bytes,
    errors_connect = e.connect, errors_read = e.read, errors_write = e.write,
    errors_status = e.status, errors_timeout = e.timeout,
    lat_mean_us = latency.mean, lat_max_us = latency.max,
    p50_us = latency:percentile(50), p90_us = latency:percentile(90),
    p99_us = latency:percentile(99), p999_us = latency:percentile(99.9),
    counts = merged,
  }
  io.write("BENCH_JSON " .. encode(out) .. "\n")
end
