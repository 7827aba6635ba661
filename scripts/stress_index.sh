#!/usr/bin/env bash
# docqa index at scale on hostile input: N generated files (default 100,000),
# about one in ten bad (see make_stress_corpus.py). Checks that the run
# finishes, that every bad file is reported with a reason, that every good one
# is indexed, and that the index verifies; prints time and peak memory.
#
#   scripts/stress_index.sh [N] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
work=${2:-target/stress}
rm -rf "$work" && mkdir -p "$work"
python3 scripts/make_stress_corpus.py "$work/corpus" "$n"
cargo build --locked -p docqa
bin=target/debug/docqa
idx="$work/corpus/the-index"   # inside the corpus on purpose: it must not index itself
/usr/bin/time -v "$bin" --index "$idx" index --json "$work/corpus" >"$work/report.json" 2>"$work/stderr.txt" || {
  tail -20 "$work/stderr.txt"
  exit 1
}
grep -E "Elapsed|Maximum resident" "$work/stderr.txt"
python3 - "$work" <<'EOF'
import json, os, sys
work = sys.argv[1]
manifest = json.load(open(os.path.join(work, "corpus.manifest.json")))
report = json.load(open(os.path.join(work, "report.json")))
skipped = {os.path.normpath(s["uri"]): s["reason"] for s in report["skipped"]}
missing = [b for b in manifest["bad"] if os.path.normpath(b["path"]) not in skipped]
print(f"indexed {report['indexed']} of {manifest['good']} good files, {report['chunks']} chunks, "
      f"{report['seconds']:.0f} s ({report['chunks_per_sec']:.1f} chunks/s); "
      f"{len(skipped)} reported, {len(manifest['bad'])} bad in the manifest")
kinds = {}
for b in manifest["bad"]:
    kinds.setdefault(b["kind"], 0)
    kinds[b["kind"]] += 1
print("bad kinds:", kinds)
ok = True
if missing:
    print(f"NOT REPORTED: {len(missing)} bad files, e.g. {missing[:3]}")
    ok = False
if report["indexed"] != manifest["good"]:
    good_skipped = [(u, r) for u, r in skipped.items() if "/good/" in u]
    print(f"GOOD FILES NOT INDEXED: {manifest['good'] - report['indexed']}, e.g. {good_skipped[:5]}")
    ok = False
sys.exit(0 if ok else 1)
EOF
"$bin" --index "$idx" status --verify
