#!/usr/bin/env bash
# Reference runtime for the LLM parity fixtures and benchmarks: llama-cpp-python
# (compiles llama.cpp from source, 15-35 minutes on 2 cores) and the gguf
# package, in target/llama-venv. Not part of the README's two commands.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x target/llama-venv/bin/python ]; then
  python3 -m venv target/llama-venv
fi
if ! target/llama-venv/bin/python -c "import llama_cpp, gguf" 2>/dev/null; then
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) target/llama-venv/bin/pip install -q numpy gguf llama-cpp-python
fi
target/llama-venv/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
