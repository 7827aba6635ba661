#!/usr/bin/env bash
# Ingest throughput, side by side in one run: `docqa bench ingest` against
# LlamaIndex (../shared/bench/llamaindex_ingest.py: IngestionPipeline with
# SentenceSplitter and HuggingFaceEmbedding) on the same BEIR documents and the
# same model, both on 2 threads, interleaved. Each run starts from nothing
# (models loaded, fresh index) and is measured with /usr/bin/time -v for its
# peak RSS. Prints one JSON line per run and the median ratios.
#
#   scripts/bench_ingest.sh [LIMIT] [ROUNDS] [-- extra docqa options]
#
# LIMIT: the first LIMIT documents of SciFact (default 1000; 0 = all 5,183).
# magpie runs twice per round: with docqa's chunking (200 tokens, 40 overlap)
# and with LlamaIndex's (256, 32), so the ratio is also shown like for like.
# LlamaIndex is installed in target/st-venv beside sentence-transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${1:-1000}
ROUNDS=${2:-3}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
EXTRA=("$@")
SHARED=${MAGPIE_SHARED:-../shared}
CORPUS=$SHARED/data/scifact/corpus.jsonl
REF=$SHARED/bench/llamaindex_ingest.py
[ -f "$CORPUS" ] || { echo "no $CORPUS: the shared data is needed" >&2; exit 1; }
[ -f "$REF" ] || { echo "no $REF: the LlamaIndex reference is needed" >&2; exit 1; }
if [ ! -x target/st-venv/bin/python ]; then
  python3 -m venv target/st-venv
fi
if ! target/st-venv/bin/python -c "import llama_index.embeddings.huggingface" 2>/dev/null; then
  target/st-venv/bin/pip install -q sentence-transformers llama-index-core llama-index-embeddings-huggingface
fi
cargo build --locked -p docqa
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 HF_HUB_OFFLINE=1
mkdir -p target/bench
OUT=target/bench/ingest.jsonl
: > "$OUT"
LIM_ARGS=()
[ "$LIMIT" != 0 ] && LIM_ARGS=(--limit "$LIMIT")
# Append the peak RSS that /usr/bin/time saw to the JSON line the run printed.
timed() {
  local label=$1; shift
  /usr/bin/time -v "$@" 2> target/bench/time.err > target/bench/run.json
  python3 - "$label" target/bench/run.json target/bench/time.err <<'PY' | tee -a "$OUT"
import json, re, sys
label, run, err = sys.argv[1:]
row = json.loads(open(run).read().strip().splitlines()[-1])
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(err).read())
row["label"] = label
row["peak_rss_mib"] = round(int(rss.group(1)) / 1024, 1)
print(json.dumps(row))
PY
}
for i in $(seq "$ROUNDS"); do
  timed magpie target/debug/docqa "${EXTRA[@]}" bench ingest "$CORPUS" "${LIM_ARGS[@]}"
  timed magpie-256 target/debug/docqa "${EXTRA[@]}" bench ingest "$CORPUS" "${LIM_ARGS[@]}" --chunk-tokens 256 --overlap 32
  timed llamaindex env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE target/st-venv/bin/python "$REF" "$CORPUS" models/all-MiniLM-L6-v2 ${LIMIT/#0/}
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(label, key):
    return statistics.median(r[key] for r in rows if r["label"] == label)
li_docs, li_rss = med("llamaindex", "docs") / med("llamaindex", "seconds"), med("llamaindex", "peak_rss_mib")
for label in ["magpie", "magpie-256"]:
    docs = statistics.median(r["docs_per_s"] for r in rows if r["label"] == label)
    rss = med(label, "peak_rss_mib")
    busy = med(label, "encoder_busy")
    print(f"{label}: {docs:.1f} docs/s ({docs / li_docs:.2f}x LlamaIndex's {li_docs:.1f}), "
          f"peak RSS {rss:.0f} MiB ({rss / li_rss:.2f}x LlamaIndex's {li_rss:.0f}), encoder busy {busy:.0%}")
PY
