#!/usr/bin/env bash
# Start the real Qdrant server the tests run against, from ../shared/tools/qdrant
# (a Qdrant release built from source, with its start.sh), and print the
# environment the tests read:
#
#   eval "$(scripts/qdrant_server.sh start)"   # exports QDRANT_URL, MAGPIE_QDRANT_START, MAGPIE_QDRANT_PID
#   scripts/qdrant_server.sh stop
#
# Without that folder it prints a loud notice on stderr and exports nothing: the
# tests that need a real server then say SKIPPED. MAGPIE_QDRANT_TOOLS names
# another folder holding a start.sh; QDRANT_URL already set means "use that
# server" and nothing is started.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${MAGPIE_QDRANT_TOOLS:-../shared/tools/qdrant}"
storage=target/qdrant-test/single
case "${1:-}" in
start)
    if [ -n "${QDRANT_URL:-}" ]; then
        echo "QDRANT_URL is set ($QDRANT_URL): the tests use that server" >&2
        [ -x "$tools/start.sh" ] && echo "export MAGPIE_QDRANT_START=$(cd "$tools" && pwd)/start.sh"
        exit 0
    fi
    if [ ! -x "$tools/start.sh" ]; then
        {
            echo "*** SKIPPED: no real Qdrant server: $tools/start.sh is missing, so the remote,"
            echo "*** store and cluster tests run against the in-memory stand-in only."
        } >&2
        exit 0
    fi
    start="$(cd "$tools" && pwd)/start.sh"
    # A server left over by an interrupted run holds the ports: stop it first.
    if [ -f "$storage/qdrant.pid" ]; then kill "$(cat "$storage/qdrant.pid")" 2>/dev/null || true; sleep 0.5; fi
    rm -rf "$storage"
    # The usual ports, or others when something already listens there.
    base=6333
    for b in 6333 26333 36333; do
        if ! curl -s -m 1 -o /dev/null "http://127.0.0.1:$b/" && ! curl -s -m 1 -o /dev/null "http://127.0.0.1:$((b + 1))/"; then
            base=$b; break
        fi
    done
    pid=$(QDRANT_HTTP_PORT=$base QDRANT_GRPC_PORT=$((base + 1)) QDRANT_P2P_PORT=$((base + 2)) "$start" "$storage")
    version=$(curl -s -m 2 "http://127.0.0.1:$base/" | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')
    echo "real Qdrant $version started (pid $pid), gRPC on 127.0.0.1:$((base + 1)), storage $storage" >&2
    echo "export QDRANT_URL=http://127.0.0.1:$((base + 1)) MAGPIE_QDRANT_START=$start MAGPIE_QDRANT_PID=$pid"
    ;;
stop)
    if [ -f "$storage/qdrant.pid" ]; then
        kill "$(cat "$storage/qdrant.pid")" 2>/dev/null || true
        rm -f "$storage/qdrant.pid"
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
