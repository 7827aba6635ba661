#!/usr/bin/env bash
# The test command: installs what the tests need (the default models, via pip),
# then runs every test in the workspace. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# The disk this run has, in the log: from a clean clone (as CI builds it,
# without incremental state) the build takes 5.4 GiB, the plugins 0.5, the
# models 0.3, the CUDA toolkit and its check 0.6 (removed before the tests
# where the disk is short); keep 8 GiB free.
df -h . "${TMPDIR:-/tmp}" | sed 's/^/disk: /'
# Each phase's start in the log, for keeping CI under an hour.
phase() { echo "=== $1 (at $((SECONDS / 60)) min $((SECONDS % 60)) s)"; }

# The `cuda` feature compiles (candle's CUDA kernels with nvcc from PyPI's
# wheels; no GPU needed to compile). It runs beside the builds below, which
# leave one core idle much of the time, and is done before the tests start.
mkdir -p target
scripts/check_cuda.sh > target/check_cuda.log 2>&1 &
CUDA_CHECK=$!
trap 'kill "$CUDA_CHECK" 2>/dev/null || true' EXIT

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
trap 'scripts/qdrant_server.sh stop; kill "$CUDA_CHECK" 2>/dev/null || true' EXIT
phase test-build
cargo test --locked --workspace --no-run "$@"
phase cuda
if ! wait "$CUDA_CHECK"; then
  cat target/check_cuda.log
  echo "the cuda feature does not compile (log above)"
  exit 1
fi
tail -n 3 target/check_cuda.log
# Where the disk is short (CI's is), the toolkit and its build are removed
# before the tests: the repair tests need their margin of free space.
if [ "$(df -Pk target | awk 'NR==2 {print $4}')" -lt $((16 * 1024 * 1024)) ]; then
  rm -rf target/cuda-check target/cuda target/cuda-venv
  df -h . | sed 's/^/disk after removing the CUDA check: /'
fi
phase tests
cargo test --locked --workspace "$@"
phase done
df -h . | sed 's/^/disk: /'
