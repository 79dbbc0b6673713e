#!/usr/bin/env bash
# Load test of examples/actix_web_service.rs (or, with SERVICE=axum, examples/axum_service.rs:
# the same service on axum with leasepool's tower layer) on loopback: about 10x its capacity
# for 10 s.
#
# Capacity: 4 pools x one 200 ms blocking call per request = 20 requests/s. wrk runs
# $CONNECTIONS connections (default 200), each pausing $PAUSE_MS (default 500 ms) between
# requests; with ~500 ms answers that offers about 200 requests/s, 10x capacity. Requests beyond capacity wait at most 500 ms
# for a lease (or are refused at once past max_waiters = 64) and are answered 503 with
# Retry-After. Reports status counts, p50/p99 latency, throughput and the service's peak RSS,
# and fails unless every non-200 answer was a 503 carrying Retry-After.
#
# Usage: [SERVICE=actix|axum] bench/http_load.sh [--out DIR]
#   (default SERVICE actix; default DIR: bench/ under cargo's target directory)
#
# The unpaced (closed-loop) case: no pause between a connection's requests, which offers as much
# as the loopback and the service can take (thousands of times capacity):
#   PAUSE_MS=0 CONNECTIONS=100 bench/http_load.sh
# Other knobs: LEASEPOOL_LOAD_SECS (default 10), LEASEPOOL_LOAD_PORT (default 18089).
set -euo pipefail
cd "$(dirname "$0")/.."

# Cargo's own idea of the target directory (CARGO_TARGET_DIR, .cargo/config, or ./target).
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || { echo "FAIL: cannot find cargo's target directory" >&2; exit 1; }
out=$target_dir/bench
if [ "${1:-}" = "--out" ] && [ -n "${2:-}" ]; then out=$2; fi
mkdir -p "$out"
port=${LEASEPOOL_LOAD_PORT:-18089}
duration=${LEASEPOOL_LOAD_SECS:-10}
connections=${CONNECTIONS:-200}

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk from the Debian packages ..."
  (apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; })
fi

case ${SERVICE:-actix} in
  actix) example=actix_web_service features=web,serde,metrics ;;
  axum) example=axum_service features=tower,serde,metrics ;;
  *) echo "FAIL: SERVICE is actix or axum, not ${SERVICE}" >&2; exit 1 ;;
esac
cargo build --release --quiet --example "$example" --features "$features"
binary=$target_dir/release/examples/$example
[ -x "$binary" ] || { echo "FAIL: the service was not built at $binary" >&2; exit 1; }
LEASEPOOL_ADDR="127.0.0.1:$port" LEASEPOOL_SERVE_SECS=$((duration + 15)) \
  "$binary" >"$out/http_service.log" 2>&1 &
service=$!
trap 'kill "$service" 2>/dev/null || true' EXIT
up=no
for _ in $(seq 1 100); do
  if curl -sf -o /dev/null "http://127.0.0.1:$port/stats"; then up=yes; break; fi
  kill -0 "$service" 2>/dev/null || break
  sleep 0.1
done
if [ "$up" != yes ]; then
  echo "FAIL: the service did not come up on 127.0.0.1:$port; its log ($out/http_service.log):" >&2
  tail -n 20 "$out/http_service.log" >&2
  exit 1
fi

lua=$(mktemp --suffix=.lua)
cat >"$lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  counts = {}
  bad = 0
  n = 0
end
-- Pace each connection so the offered load is about 10x capacity (see the header).
local pause = tonumber(os.getenv("PAUSE_MS") or "500")
function delay() return pause end
function request()
  n = n + 1
  return wrk.format("GET", "/devices/" .. (n % 1000) .. "/status")
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status ~= 200 then
    local retry = headers["Retry-After"] or headers["retry-after"]
    if status ~= 503 or retry == nil then bad = bad + 1 end
  end
end
function done(summary, latency, requests)
  local total = {}
  local bad_total = 0
  for _, t in ipairs(threads) do
    for status, c in pairs(t:get("counts")) do total[status] = (total[status] or 0) + c end
    bad_total = bad_total + t:get("bad")
  end
  for status, c in pairs(total) do io.write(string.format("status %d: %d\n", status, c)) end
  io.write(string.format("requests: %d in %.1f s = %.1f req/s\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6)))
  io.write(string.format("latency p50: %.1f ms, p99: %.1f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  io.write(string.format("socket errors: connect %d read %d write %d timeout %d\n",
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
  io.write(string.format("non-200 answers that were not 503 + Retry-After: %d\n", bad_total))
end
LUA

echo "service: $example"
PAUSE_MS=${PAUSE_MS:-500} wrk -t2 -c"$connections" -d"${duration}s" --timeout 10s -s "$lua" "http://127.0.0.1:$port" | tee "$out/http-load.txt"
peak=$(awk '/VmHWM/ {print $2}' "/proc/$service/status")
echo "service peak RSS: ${peak} KiB" | tee -a "$out/http-load.txt"
rm -f "$lua"

grep -q "non-200 answers that were not 503 + Retry-After: 0$" "$out/http-load.txt" || {
  echo "FAIL: some non-200 answers were not 503 + Retry-After" >&2
  exit 1
}
grep -q "^status 200:" "$out/http-load.txt" || { echo "FAIL: no request succeeded" >&2; exit 1; }
