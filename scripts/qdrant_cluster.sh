#!/usr/bin/env bash
# A Qdrant cluster of N nodes on loopback, from the real server in
# ../shared/tools/qdrant (or the start.sh named by MAGPIE_QDRANT_START), for the
# cluster test and the store benchmark.
#
#   scripts/qdrant_cluster.sh start DIR [NODES=3] [BASE_PORT=7400]
#       node i listens on BASE_PORT+10i (REST), +1 (gRPC), +2 (peer-to-peer);
#       prints the gRPC URL of node 0 once every node has joined
#   scripts/qdrant_cluster.sh kill DIR I       SIGKILL node I (its storage stays)
#   scripts/qdrant_cluster.sh restart DIR I    start node I again on its storage
#   scripts/qdrant_cluster.sh stop DIR         stop every node
set -euo pipefail
cd "$(dirname "$0")/.."
start="${MAGPIE_QDRANT_START:-${MAGPIE_QDRANT_TOOLS:-../shared/tools/qdrant}/start.sh}"
cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,12p' "$0" >&2; exit 2; }
mkdir -p "$dir"

node() { # I: start node I with the ports recorded in DIR
    local i=$1 base; base=$(cat "$dir/base_port")
    local h=$((base + 10 * i)) g=$((base + 10 * i + 1)) p=$((base + 10 * i + 2))
    local extra="--uri http://127.0.0.1:$p"
    [ "$i" != 0 ] && extra="--bootstrap http://127.0.0.1:$((base + 2)) $extra"
    QDRANT__CLUSTER__ENABLED=true QDRANT_HTTP_PORT=$h QDRANT_GRPC_PORT=$g QDRANT_P2P_PORT=$p \
        QDRANT_EXTRA_ARGS="$extra" "$start" "$dir/node$i" >/dev/null
}

case "$cmd" in
start)
    [ -x "$start" ] || { echo "no Qdrant start script at $start" >&2; exit 1; }
    nodes="${3:-3}"; base="${4:-7400}"
    echo "$base" >"$dir/base_port"; echo "$nodes" >"$dir/nodes"
    for i in $(seq 0 $((nodes - 1))); do node "$i"; done
    for _ in $(seq 1 150); do
        peers=$(curl -s -m 1 "http://127.0.0.1:$base/cluster" | grep -o '"uri"' | wc -l || true)
        if [ "$peers" -ge "$nodes" ]; then echo "http://127.0.0.1:$((base + 1))"; exit 0; fi
        sleep 0.2
    done
    echo "the cluster did not form: $peers of $nodes peers" >&2; exit 1
    ;;
kill) kill -9 "$(cat "$dir/node$3/qdrant.pid")" ;;
restart) node "$3" ;;
stop)
    for f in "$dir"/node*/qdrant.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    ;;
*) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
