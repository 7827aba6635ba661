#!/usr/bin/env bash
# Load on `docqa serve` over loopback with wrk (Debian's package):
#   1. search at 64 connections for 30 s;
#   2. the same while documents are being added and indexed through the API;
#   3. questions at 16 connections against a model queue of 2: the overflow must
#      be answered 429 (with Retry-After), never a timeout or a crash.
# Prints throughput, latency percentiles, status counts and the server's peak RSS.
# Usage: scripts/bench_serve.sh [seconds]   (run scripts/demo.sh first: models, build)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --locked -q -p docqa
BIN=target/debug/docqa
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
$BIN --index "$WORK/idx" index examples/docqa/sample >/dev/null 2>&1
$BIN --index "$WORK/idx" serve --bind 127.0.0.1:0 --llm-queue 2 >"$WORK/out" 2>"$WORK/err" &
SERVER=$!
for _ in $(seq 100); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.2; done
URL=$(sed -n 's/^docqa listening on //p' "$WORK/out")
echo "server $URL (pid $SERVER)"

cat >"$WORK/count.lua" <<'LUA'
local counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, k .. ": " .. v) end
  table.sort(parts)
  io.write("statuses  " .. table.concat(parts, ", ") .. "\n")
  io.write(string.format("p50 %.2f ms  p99 %.2f ms  errors: connect %d read %d write %d timeout %d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
end
LUA

echo; echo "== search, 64 connections, ${SECS}s"
wrk -t2 -c64 -d"${SECS}s" --timeout 10s -s "$WORK/count.lua" "$URL/v1/search?q=how+large+can+a+survey+grow&k=5" | grep -E "Requests/sec|statuses|p50|Transfer"

echo; echo "== search, 64 connections, ${SECS}s, while documents are added and indexed"
(
  i=0
  end=$((SECONDS + SECS))
  while [ $SECONDS -lt $end ]; do
    i=$((i + 1))
    curl -s -o /dev/null -X POST "$URL/v1/documents" -H 'content-type: application/json' \
      -d "{\"name\": \"load-$i.md\", \"text\": \"# Load document $i\\n\\nSurvey $i records sightings of species number $i in grid square $i. $(printf 'More notes about the survey and its observers. %.0s' $(seq 40))\"}"
    sleep 0.2
  done
  echo "$i documents sent" >"$WORK/added"
) &
ADDER=$!
wrk -t2 -c64 -d"${SECS}s" --timeout 10s -s "$WORK/count.lua" "$URL/v1/search?q=how+large+can+a+survey+grow&k=5" | grep -E "Requests/sec|statuses|p50"
wait $ADDER
cat "$WORK/added"
for _ in $(seq 300); do
  queued=$(curl -s "$URL/metrics" | sed -n 's/^docqa_indexing_jobs_queued //p')
  running=$(curl -s "$URL/metrics" | sed -n 's/^docqa_indexing_jobs_running //p')
  [ "$queued" = 0 ] && [ "$running" = 0 ] && break
  sleep 1
done
curl -s "$URL/metrics" | grep -E "^docqa_index_(documents|chunks) "

echo; echo "== questions, 16 connections asking 10/s each, model queue 2, 20s"
cat >"$WORK/query.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"question": "How large can a survey grow?", "max_tokens": 24}'
-- each connection asks ten times a second (a client that ignores Retry-After)
function delay() return 100 end
LUA
cat "$WORK/count.lua" >>"$WORK/query.lua"
wrk -t2 -c16 -d20s --timeout 60s -s "$WORK/query.lua" "$URL/v1/query" | grep -E "Requests/sec|statuses|p50"
curl -s "$URL/healthz"; echo
echo "peak RSS of the server: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$SERVER/status)"
kill -TERM $SERVER; wait $SERVER || true

# 4. Search on a keyed server, alone and then beside the soak generator (the
#    seeded mix of valid and hostile requests the soak test sends: bad keys,
#    huge queries, foreign hosts and origins, uploads, embeddings...).
READ=read-key-0123456789abcdef
ADMIN=admin-key-0123456789abcdef
cargo build --locked -q -p docqa --example soak
$BIN --index "$WORK/idx" serve --bind 127.0.0.1:0 --read-keys $READ --admin-keys $ADMIN >"$WORK/out2" 2>"$WORK/err2" &
SERVER=$!
for _ in $(seq 100); do grep -q listening "$WORK/out2" 2>/dev/null && break; sleep 0.2; done
URL=$(sed -n 's/^docqa listening on //p' "$WORK/out2")
echo; echo "== search, 64 connections, ${SECS}s, keyed server, alone"
wrk -t2 -c64 -d"${SECS}s" --timeout 10s -H "Authorization: Bearer $READ" -s "$WORK/count.lua" "$URL/v1/search?q=how+large+can+a+survey+grow&k=5" | grep -E "Requests/sec|statuses|p50"
echo; echo "== search, 64 connections, ${SECS}s, beside the soak generator (8 workers)"
target/debug/examples/soak "$URL" $READ $ADMIN 1000000 8 >"$WORK/soak" 2>&1 &
SOAK=$!
sleep 1
wrk -t2 -c64 -d"${SECS}s" --timeout 10s -H "Authorization: Bearer $READ" -s "$WORK/count.lua" "$URL/v1/search?q=how+large+can+a+survey+grow&k=5" | grep -E "Requests/sec|statuses|p50"
kill $SOAK 2>/dev/null || true; wait $SOAK 2>/dev/null || true
echo "peak RSS of the keyed server: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$SERVER/status)"
kill -TERM $SERVER; wait $SERVER || true
