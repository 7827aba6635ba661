#!/usr/bin/env bash
# Compiles the `cuda` feature on a machine without a GPU: the CUDA toolkit
# from PyPI's wheels (scripts/setup_cuda.sh), candle's CUDA kernels built
# for compute capability 90 (Hopper), and magpie's crates type-checked with
# the feature on. A link needs the driver's libcuda, which only a GPU machine
# has, so this checks rather than builds. CI runs it on every run
# (scripts/test.sh); about 10 minutes on 2 cores from nothing, most of it
# nvcc compiling candle's quantized matrix kernels.
#
#   scripts/check_cuda.sh              # magpie-candle, where the GPU code lives
#   scripts/check_cuda.sh docqa        # the whole application
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup_cuda.sh)"
CRATE=${1:-magpie-candle}
echo "--- cargo check -p $CRATE --features cuda (nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), compute capability $CUDA_COMPUTE_CAP)"
# not incremental: a check from nothing leaves no incremental state to keep
CARGO_INCREMENTAL=0 CARGO_TARGET_DIR=target/cuda-check cargo check --locked -p "$CRATE" --features cuda
