#!/usr/bin/env bash
# LLM speed, side by side in one run: magpie (`docqa bench llm`) against
# llama.cpp (llama-cpp-python) on the same GGUF, the same prompt tokens and
# generated token count, both on 2 threads, interleaved. Prints one JSON line
# per runtime and the ratios (magpie / llama.cpp).
#
#   scripts/bench_llm.sh [PROMPT_TOKENS] [GEN_TOKENS] [ROUNDS]
#
# llama-cpp-python is built in target/llama-venv by scripts/setup_llama_ref.sh.
#
# BENCH_ISA=avx2 runs both as on a CPU without AVX-512: magpie with
# MAGPIE_LLM_KERNELS=avx2, llama.cpp built for AVX2 + FMA only
# (target/llama-venv-avx2).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_PY=target/llama-venv/bin/python
if [ "${BENCH_ISA:-}" = avx2 ]; then
  export MAGPIE_LLM_KERNELS=avx2
  LLAMA_PY=target/llama-venv-avx2/bin/python
fi
NP=${1:-384}
NG=${2:-128}
ROUNDS=${3:-3}
MODEL=${MAGPIE_MODELS:-models}/gemma-3-270m-q4_k_m.gguf
scripts/setup_llama_ref.sh >/dev/null
cargo build --locked -q -p docqa
mkdir -p target/bench
python3 - > target/bench/llm_prompt.txt <<'PY'
import pathlib
s = pathlib.Path("examples/docqa/sample")
print(((s / "guide/configuration.md").read_text() + (s / "guide/install.md").read_text() + (s / "faq.txt").read_text()) * 6)
PY
: > target/bench/llm.jsonl
for _ in $(seq "$ROUNDS"); do
  target/debug/docqa bench llm --prompt-tokens "$NP" --gen-tokens "$NG" --repeat 1 \
    --prompt-file target/bench/llm_prompt.txt | tee -a target/bench/llm.jsonl
  $LLAMA_PY scripts/bench_llamacpp.py "$MODEL" target/bench/llm_prompt.txt "$NP" "$NG" 1 \
    | tee -a target/bench/llm.jsonl
done
python3 - <<'PY'
import json, statistics
rows = [json.loads(l) for l in open("target/bench/llm.jsonl")]
def med(rt, k):
    return statistics.median(r[k] for r in rows if r["runtime"] == rt)
for k in ["prefill_tokens_per_sec", "decode_tokens_per_sec", "load_seconds", "peak_rss_mib"]:
    m, l = med("magpie", k), med("llama.cpp", k)
    print(f"{k:24s} magpie {m:8.2f}  llama.cpp {l:8.2f}  ratio {m / l:5.2f}")
PY
