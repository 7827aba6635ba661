#!/usr/bin/env bash
# The CUDA toolkit pieces candle's `cuda` feature needs to compile, from
# PyPI's wheels (nvcc, the runtime headers, CCCL, cuBLAS, cuRAND, NVRTC), in
# target/cuda-venv, gathered as one toolkit tree in target/cuda (bin/nvcc,
# include/, lib64/). No GPU is needed to compile: the kernels are built for
# compute capability 90 (Hopper, the H200) since none can be detected here.
#
#   eval "$(scripts/setup_cuda.sh)"     # installs once, prints the exports
#
# Prints the environment the build needs (PATH with nvcc, CUDA_ROOT,
# CUDA_PATH, CUDA_COMPUTE_CAP); everything else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD/target/cuda
VENV=$PWD/target/cuda-venv
CAP=${CUDA_COMPUTE_CAP:-90}
# CUDA 12.9: the last release line with a complete set of -cu12 wheels; its
# nvcc knows sm_80 and sm_90.
PKGS=(
  "nvidia-cuda-nvcc-cu12==12.9.*"
  "nvidia-cuda-runtime-cu12==12.9.*"
  "nvidia-cuda-cccl-cu12==12.9.*"
  "nvidia-cuda-nvrtc-cu12==12.9.*"
  "nvidia-cublas-cu12==12.9.*"
  "nvidia-curand-cu12"
)
if [ ! -x "$ROOT/bin/nvcc" ]; then
  {
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "${PKGS[@]}"
    NV=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0] + "/x"))')
    rm -rf "$ROOT"
    mkdir -p "$ROOT/bin" "$ROOT/include" "$ROOT/lib64"
    # every wheel's bin/, include/ and lib/ merged into one tree
    for pkg in "$NV"/*/; do
      for sub in bin include lib lib64; do
        [ -d "$pkg$sub" ] || continue
        dest=$ROOT/$sub
        [ "$sub" = lib ] && dest=$ROOT/lib64
        cp -rs "$pkg$sub/." "$dest/" 2>/dev/null || cp -r "$pkg$sub/." "$dest/"
      done
    done
    # nvcc finds its own pieces (cicc, ptxas, libdevice) relative to itself
    if [ -d "$NV/cuda_nvcc/nvvm" ]; then
      ln -sfn "$NV/cuda_nvcc/nvvm" "$ROOT/nvvm"
    fi
    # unversioned names for the linker and for cudarc's loader
    for lib in "$ROOT"/lib64/lib*.so.*; do
      [ -e "$lib" ] || continue
      base=${lib%%.so.*}.so
      [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
    done
    "$ROOT/bin/nvcc" --version | tail -2
  } >&2
fi
echo "export CUDA_ROOT=$ROOT CUDA_PATH=$ROOT CUDA_TOOLKIT_ROOT_DIR=$ROOT"
echo "export PATH=$ROOT/bin:\$PATH"
echo "export CUDA_COMPUTE_CAP=$CAP"
