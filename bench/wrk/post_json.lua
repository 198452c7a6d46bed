-- wrk script: POST the body read from $BENCH_BODY_FILE (Content-Type $BENCH_CONTENT_TYPE, default JSON;
-- Accept $BENCH_ACCEPT if set) to the URL given on the command line,
-- and print one machine-readable line (prefix BENCH_JSON) with counts, errors and latency percentiles (us).
-- wrk counts a response with status >= 400 in errors.status; socket errors are connect/read/write/timeout.

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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max
  ))
end
