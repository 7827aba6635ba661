#!/usr/bin/env bash
# The CUDA toolkit pieces candle's `cuda` feature needs to compile, from
# PyPI's wheels (nvcc, the runtime headers, CCCL, NVRTC), in
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
# CUDA 13.0: the -cu12 wheels carry ptxas but no nvcc; 13.0 is what the
# device machines' driver (580) runs, so its PTX loads there, and cudarc knows it.
PKGS=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
  "nvidia-cuda-nvrtc==13.0.*"
  # nvcc's own parts come as separate wheels: pinned, or pip takes the
  # newest, whose PTX this ptxas rejects
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-crt==13.0.*"
)
if [ ! -x "$ROOT/bin/nvcc" ]; then
  {
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "${PKGS[@]}"
    NV=$("$VENV/bin/python" -c 'import nvidia; print(list(nvidia.__path__)[0])')
    rm -rf "$ROOT"
    mkdir -p "$ROOT/bin" "$ROOT/include" "$ROOT/lib64"
    # every wheel's bin/, include/, lib/ and nvvm/ (nvcc finds cicc and
    # libdevice beside itself) merged into one tree, as hard links to the
    # wheels' files (no second copy on the disk)
    for pkg in "$NV"/*/; do
      for sub in bin include lib lib64 nvvm; do
        [ -d "$pkg$sub" ] || continue
        dest=$ROOT/$sub
        [ "$sub" = lib ] && dest=$ROOT/lib64
        mkdir -p "$dest"
        cp -rlf "$pkg$sub/." "$dest/" 2>/dev/null || cp -rf "$pkg$sub/." "$dest/"
      done
    done
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
