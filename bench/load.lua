-- wrk script: GET one path, or spread GETs over account ids, and print a JSON summary.
--
-- Usage: wrk ... -s bench/load.lua -- PATH [ACCOUNTS_FILE]
--   PATH alone is requested every time (for example /healthz).
--   With ACCOUNTS_FILE (one account id per line), request i goes to PATH .. id[i mod n].
-- The Authorization header is "Bearer " .. $BENCH_API_KEY on every request.
-- done() prints one line "BENCH_JSON {...}" with counts and latency percentiles in microseconds.

local paths = {}
local counter = 0

function init(args)
  local path = args[1] or "/"
  local accounts_file = args[2]
  if accounts_file then
    for id in io.lines(accounts_file) do
      if id ~= "" then
        paths[#paths + 1] = path .. id
      end
    end
  else
    paths[1] = path
  end
  local key = os.getenv("BENCH_API_KEY")
  if key then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
end

function request()
  counter = counter + 1
  return wrk.format("GET", paths[(counter % #paths) + 1])
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
