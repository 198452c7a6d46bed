-- wrk script: post_json.lua plus a count of every response status, for the overload scenario (503s are
-- load shedding, not failures). POSTs the body read from $BENCH_BODY_FILE (Content-Type $BENCH_CONTENT_TYPE,
-- default JSON; Accept $BENCH_ACCEPT if set) and prints one BENCH_JSON line with counts, errors, latency
-- percentiles (us) and "statuses": {"200": n, "503": m, ...} summed over wrk's threads.
-- wrk's latency covers every response (answered and shed alike): its Lua API cannot tell which request a
-- response belongs to, so percentiles of the 200s alone are not available here.

local path = os.getenv("BENCH_BODY_FILE")
local file = assert(io.open(path, "rb"), "cannot open BENCH_BODY_FILE: " .. tostring(path))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
local accept = os.getenv("BENCH_ACCEPT")
if accept then
  wrk.headers["Accept"] = accept
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {} -- global: read back from each thread in done()
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(totals) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d, '
      .. '"statuses": {%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    table.concat(parts, ", ")
  ))
end
