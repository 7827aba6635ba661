#!/usr/bin/env bash
# The test command: installs what the tests need (the default models, via pip),
# then runs every test in the workspace. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# The disk this run has, in the log: from a clean clone (as CI builds it,
# without incremental state) the build takes 5.4 GiB, the plugins 0.5, the
# models 0.3, the CUDA toolkit and its check 0.6; keep 8 GiB free.
df -h . "${TMPDIR:-/tmp}" | sed 's/^/disk: /'
# Each phase's start in the log, for keeping CI under an hour.
phase() { echo "=== $1 (at $((SECONDS / 60)) min $((SECONDS % 60)) s)"; }

# One build profile for tests and the demo (see Cargo.toml): dependencies are
# optimised, so the tests with real models run fast.
# The WebAssembly plugins (bundled and test ones) for wasm32-wasip2, and the
# unit tests of their pure-Rust parts run natively.
phase plugins
scripts/build_plugins.sh
cargo test --locked --manifest-path plugins/Cargo.toml
phase build
cargo build --locked -p docqa
target/debug/docqa models fetch all
# Chromium + Playwright and the openai Python package, for the service tests.
scripts/setup_test_tools.sh
# A real Qdrant server (from ../shared/tools/qdrant when it is there) for the
# remote, store and cluster tests; stopped when the tests end.
eval "$(scripts/qdrant_server.sh start)"
trap 'scripts/qdrant_server.sh stop' EXIT
phase tests
cargo test --locked --workspace "$@"
# The `cuda` feature compiles (candle's CUDA kernels with nvcc from PyPI's
# wheels; no GPU needed to compile). Last, once the tests' temporary indexes
# are gone, so the toolkit and its build never share the disk with them.
phase cuda
scripts/check_cuda.sh
phase done
df -h . | sed 's/^/disk: /'
