#!/usr/bin/env bash
# The test command: installs what the tests need (the default models, via pip),
# then runs every test in the workspace. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# The disk this run has, in the log: from a clean clone (as CI builds it,
# without incremental state) the build takes 5.4 GiB, the plugins 0.5, the
# models 0.3, the CUDA toolkit and its check 0.6; keep 8 GiB free.
df -h . "${TMPDIR:-/tmp}" | sed 's/^/disk: /'

# One build profile for tests and the demo (see Cargo.toml): dependencies are
# optimised, so the tests with real models run fast.
# The WebAssembly plugins (bundled and test ones) for wasm32-wasip2, and the
# unit tests of their pure-Rust parts run natively.
scripts/build_plugins.sh
cargo test --locked --manifest-path plugins/Cargo.toml
cargo build --locked -p docqa
target/debug/docqa models fetch all
# Chromium + Playwright and the openai Python package, for the service tests.
scripts/setup_test_tools.sh
# A real Qdrant server (from ../shared/tools/qdrant when it is there) for the
# remote, store and cluster tests; stopped when the tests end.
eval "$(scripts/qdrant_server.sh start)"
trap 'scripts/qdrant_server.sh stop' EXIT
cargo test --locked --workspace "$@"
# The `cuda` feature compiles (candle's CUDA kernels with nvcc from PyPI's
# wheels; no GPU needed to compile). Last, once the tests' temporary indexes
# are gone, so the toolkit and its build never share the disk with them.
scripts/check_cuda.sh
df -h . | sed 's/^/disk: /'
