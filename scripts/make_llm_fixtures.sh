#!/usr/bin/env bash
# Rewrite every llama.cpp logit fixture the LLM tests read
# (tests/fixtures/*_llamacpp.json) with llama-cpp-python, the KV cache in f16
# as magpie keeps it by default: Gemma 3 270M on the built-in prompts, the
# tiny models of every layout on their prompts with 16 greedy tokens, and the
# tiny models' LoRA adapters.
#
#   scripts/make_llm_fixtures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_llama_ref.sh >/dev/null
PY=target/llama-venv/bin/python
T=target/tiny-models
cargo run --locked -q -p magpie-tests --bin write_tiny_models -- "$T" >/dev/null
F=tests/fixtures
$PY scripts/make_llm_fixture.py "${MAGPIE_MODELS:-models}/gemma-3-270m-q4_k_m.gguf" $F/gemma3_270m_llamacpp.json
for arch in llama qwen2 qwen3 chatglm glm4; do
  $PY scripts/make_llm_fixture.py "$T/tiny-$arch-2l.gguf" $F/tiny_${arch}_llamacpp.json "$T/prompts-$arch.json" --greedy 16
done
$PY scripts/make_llm_fixture.py "$T/tiny-llama-2l.gguf" $F/tiny_llama_lora_llamacpp.json "$T/prompts-llama.json" --greedy 16 --lora "$T/tiny-llama-2l-lora-a.gguf"
$PY scripts/make_llm_fixture.py "$T/tiny-llama-2l.gguf" $F/tiny_llama_lora_b_llamacpp.json "$T/prompts-llama.json" --greedy 16 --lora "$T/tiny-llama-2l-lora-b.gguf:0.5"
$PY scripts/make_llm_fixture.py "$T/tiny-qwen2-2l.gguf" $F/tiny_qwen2_lora_llamacpp.json "$T/prompts-qwen2.json" --greedy 16 --lora "$T/tiny-qwen2-2l-lora-a.gguf"
# llama.cpp itself moves Gemma's logits by up to 0.8 from one run to the next
# (measured 2026-12-07): a fixture rewritten may need its tolerance checked
$PY scripts/make_llm_fixture.py "${MAGPIE_MODELS:-models}/gemma-3-270m-q4_k_m.gguf" $F/gemma3_270m_f32kv_llamacpp.json --kv f32
$PY scripts/make_llm_fixture.py "${MAGPIE_MODELS:-models}/gemma-3-270m-q4_k_m.gguf" $F/gemma3_270m_q8kv_llamacpp.json --kv q8_0
