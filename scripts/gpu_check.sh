#!/usr/bin/env bash
# The GPU check (connectors/candle/examples/gpu_check): parity of the GPU
# against the CPU on the tiny model of every layout, generation speed of a
# 1.2B-parameter llama against the GPU's memory bandwidth, and the f16
# embedder. Built here, run on the GPU machine:
#
#   scripts/gpu_check.sh build      # here, no GPU needed: builds with the cuda
#                                   # feature and gathers target/gpu-check/
#   scripts/gpu_check.sh run        # on the GPU machine, over the gathered
#                                   # folder; the report goes to $OUT (or the
#                                   # folder) as gpu_check.json
#   scripts/gpu_check.sh dry-run    # here: the same program built without
#                                   # cuda, on the CPU at small sizes
#
# The build links against the CUDA libraries' names only: the driver
# (libcuda), cuBLAS and cuRAND are not on this machine, so stand-ins with
# their sonames and symbols are linked (target/cuda-stubs); the GPU machine's
# real libraries are loaded at run time. What travels (64 MiB at most): the
# stripped binary, the tiny models and MiniLM's files without its weights.
set -euo pipefail
# where this script lies, before the cd below (on the GPU machine it runs as
# target/gpu-check/gpu_check.sh, beside what it needs)
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$(dirname "$0")/.."
GATHER=target/gpu-check

gather() { # gather BINARY
  rm -rf "$GATHER" && mkdir -p "$GATHER/minilm/1_Pooling"
  if [ ! -f target/tiny-models/tiny-glm4-2l.gguf ]; then
    cargo run --locked -q -p magpie-tests --bin write_tiny_models -- target/tiny-models >/dev/null
  fi
  cp target/tiny-models/tiny-*-2l.gguf target/tiny-models/prompts-*.json "$GATHER/"
  for f in models/all-MiniLM-L6-v2/*; do
    [ -f "$f" ] && [ "$(basename "$f")" != model.safetensors ] && cp "$f" "$GATHER/minilm/"
  done
  cp models/all-MiniLM-L6-v2/1_Pooling/config.json "$GATHER/minilm/1_Pooling/" 2>/dev/null || true
  # stripped and compressed: the cuda build carries candle's kernels for
  # every type (69 MB stripped, 17 MB gzipped)
  strip -o "$GATHER/gpu_check" "$1" 2>/dev/null || cp "$1" "$GATHER/gpu_check"
  gzip -f "$GATHER/gpu_check"
  cp scripts/gpu_check.sh "$GATHER/"
  du -sh "$GATHER" | sed 's/^/gathered: /'
}

stubs() { # link-time stand-ins for libraries only the GPU machine has
  # every function answers 999 (CUDA_ERROR_UNKNOWN): a build run where
  # these stand-ins are found sees no GPU and runs on the CPU
  local dir=target/cuda-stubs src=$HOME/.cargo/registry/src
  src=$(ls -d "$src"/*/cudarc-0.19.* | head -1)
  mkdir -p "$dir"
  while read -r lib soname sys; do
    grep -ho '^pub unsafe fn [A-Za-z0-9_]*' "$src/src/$sys/sys/mod.rs" |
      awk '{print "int " $4 "(void) { return 999; }"}' | sort -u >"$dir/$lib.c"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$dir/lib$lib.so" "$dir/$lib.c"
  done <<'EOF'
cuda libcuda.so.1 driver
cublas libcublas.so.13 cublas
cublasLt libcublasLt.so.13 cublaslt
curand libcurand.so.10 curand
EOF
  echo "$PWD/$dir"
}

case "${1:-}" in
  build)
    eval "$(scripts/setup_cuda.sh)"
    export LIBRARY_PATH="$(stubs)${LIBRARY_PATH:+:$LIBRARY_PATH}"
    CARGO_TARGET_DIR=target/cuda-build cargo build --locked -p magpie-candle --features cuda --example gpu_check
    gather target/cuda-build/debug/examples/gpu_check
    echo "on the GPU machine, carrying $GATHER: bash $GATHER/gpu_check.sh run"
    ;;
  dry-run)
    cargo build --locked -q -p magpie-candle --example gpu_check
    gather target/debug/examples/gpu_check
    gunzip -c "$GATHER/gpu_check.gz" >target/tmp/gpu_check && chmod +x target/tmp/gpu_check
    target/tmp/gpu_check --models "$GATHER" --work target/tmp/gpu-check-work --report "$GATHER/gpu_check.json"
    ;;
  run)
    # the CUDA libraries the binary needs, from wherever the machine keeps
    # them (PyTorch's wheels, a toolkit)
    for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
      if ! ldconfig -p | grep -q "$lib"; then
        d=$(find / -xdev -name "$lib*" -not -path '*/proc/*' 2>/dev/null | head -1 || true)
        [ -n "$d" ] && LD_LIBRARY_PATH="$(dirname "$d")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      fi
    done
    export LD_LIBRARY_PATH
    nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv || true
    BIN=/tmp/magpie-gpu-check-bin
    gunzip -c "$HERE/gpu_check.gz" >"$BIN" && chmod +x "$BIN"
    ldd "$BIN" | grep -E "cuda|cublas|curand|nvrtc|not found" || true
    REPORT=${OUT:-$HERE}/gpu_check.json
    RUST_BACKTRACE=1 "$BIN" --models "$HERE" --work /tmp/magpie-gpu-check --report "$REPORT"
    ;;
  *)
    sed -n '2,20p' "$HERE/$(basename "$0")"
    exit 2
    ;;
esac
