#!/usr/bin/env bash
# Embedding throughput, side by side in one run: magpie (candle) against
# sentence-transformers (CPU torch) on the same model, sentences and batch size,
# both on 2 threads, interleaved. Prints one JSON line per run and the ratio.
#
#   scripts/bench_embed.sh [BATCH] [N] [WORDS]
#
# Sentences: the first WORDS (default 40) words of the first N SciFact abstracts
# that are at least that long (../shared/data).
# sentence-transformers is installed in target/st-venv (about 6 GB with torch).
#
# BENCH_ISA=avx2 runs both sides as on a CPU without AVX-512 (the machine the
# project targets): magpie's encoder on its AVX2 kernels, torch, MKL and oneDNN
# capped at AVX2 (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, DNNL_MAX_CPU_ISA).
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${1:-16}
N=${2:-2000}
WORDS=${3:-40}
DATA=${MAGPIE_SHARED_DATA:-../shared/data}/scifact/corpus.jsonl
mkdir -p target/bench
python3 - "$DATA" "$N" "$WORDS" > target/bench/sentences.txt <<'PY'
import json, sys
n, w = int(sys.argv[2]), int(sys.argv[3])
out = 0
for line in open(sys.argv[1]):
    words = json.loads(line)["text"].split()
    if len(words) >= w:
        print(" ".join(words[:w]))
        out += 1
        if out == n:
            break
PY
if [ ! -x target/st-venv/bin/python ]; then
  python3 -m venv target/st-venv
  target/st-venv/bin/pip install -q sentence-transformers
fi
cargo build --locked -p docqa
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
if [ "${BENCH_ISA:-}" = avx2 ]; then
  export MAGPIE_ENCODER_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 DNNL_MAX_CPU_ISA=AVX2
fi
run_magpie() { target/debug/docqa bench embed --sentences target/bench/sentences.txt --batch "$BATCH" --repeat 1; }
run_st() {
  # OPENBLAS_CORETYPE slows current numpy here; torch does not use it, unset it for this run only
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE target/st-venv/bin/python scripts/bench_st.py \
    models/all-MiniLM-L6-v2 target/bench/sentences.txt "$BATCH"
}
: > target/bench/embed.jsonl
for i in 1 2 3; do
  run_magpie | tee -a target/bench/embed.jsonl
  run_st | tee -a target/bench/embed.jsonl
done
python3 - target/bench/embed.jsonl <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
m = statistics.median(r["sentences_per_sec"] for r in rows if r["runtime"].startswith("magpie"))
s = statistics.median(r["sentences_per_sec"] for r in rows if r["runtime"] == "sentence-transformers")
print(f"median sentences/s: magpie {m:.1f}, sentence-transformers {s:.1f}, ratio {m/s:.2f}")
PY
