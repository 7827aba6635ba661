#!/usr/bin/env bash
# The store benchmark (BENCHMARKS.md, "Embedded stores against Qdrant"): the
# embedded store, a real Qdrant single node and a three-node cluster (3 shards,
# replication 2, write consistency 2) over all of SciFact, interleaved.
#   scripts/bench_stores.sh [REPEATS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-3}"
work=target/bench-stores
rm -rf "$work/single" "$work/cluster"; mkdir -p "$work"
start="${MAGPIE_QDRANT_START:-${MAGPIE_QDRANT_TOOLS:-../shared/tools/qdrant}/start.sh}"
QDRANT_HTTP_PORT=16333 QDRANT_GRPC_PORT=16334 QDRANT_P2P_PORT=16335 "$start" "$work/single" >/dev/null
cluster=$(scripts/qdrant_cluster.sh start "$work/cluster" 3 17000)
trap 'kill "$(cat "$work/single/qdrant.pid")" 2>/dev/null || true; scripts/qdrant_cluster.sh stop "$work/cluster"' EXIT
version=$(curl -s http://127.0.0.1:16333/ | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')
echo "Qdrant $version: single node on 16334, cluster via $cluster" >&2
cargo run --release --locked -q -p magpie-tests --bin bench_stores -- --repeats "$repeats" \
    "single=qdrant+grpc://127.0.0.1:16334" \
    "cluster=qdrant+grpc://${cluster#http://}?shards=3&replication=2&write_consistency=2"
