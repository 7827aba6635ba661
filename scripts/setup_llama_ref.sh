#!/usr/bin/env bash
# Reference runtime for the LLM parity fixtures and benchmarks: llama-cpp-python
# (compiles llama.cpp from source, 15-35 minutes on 2 cores) and the gguf
# package, in target/llama-venv. Not part of the README's two commands.
#
# BENCH_ISA=avx2 builds a second one, in target/llama-venv-avx2, for AVX2 + FMA
# only (no AVX-512), as on the CPUs the project targets: scripts/bench_llm.sh
# compares magpie's AVX2 kernels against it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/llama-venv
if [ "${BENCH_ISA:-}" = avx2 ]; then
  VENV=target/llama-venv-avx2
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"
fi
if [ ! -x $VENV/bin/python ]; then
  python3 -m venv $VENV
fi
# llama.cpp's native build (-march=native) died here with SIGILL on the first
# prompt (2026-12-01, a CPU that reports AMX): build for AVX2 + AVX-512 with
# VNNI and BF16 explicitly, as the CPUs these benchmarks run on have them.
# Set CMAKE_ARGS to build otherwise.
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"}
if ! $VENV/bin/python -c "import llama_cpp, gguf" 2>/dev/null; then
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $VENV/bin/pip install -q --no-cache-dir numpy gguf llama-cpp-python==0.3.36
fi
$VENV/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
