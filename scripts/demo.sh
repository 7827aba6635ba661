#!/usr/bin/env bash
# The main job: docqa on the bundled sample corpus with the embedded stores
# (qdrant-edge + tantivy, no server) and the default local models: index,
# search, then answers from the local LLM (Gemma 3 270M) with their sources.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build_plugins.sh
cargo build --locked -p docqa
docqa=target/debug/docqa
$docqa models fetch all
$docqa --index .magpie index examples/docqa/sample
for q in "what does error E42 mean?" \
         "can magpies recognise themselves in a mirror" \
         "how do I upgrade without losing my data" \
         "喜鹊的巢是什么样的"; do
  echo
  echo "\$ docqa search \"$q\""
  $docqa --index .magpie search -k 3 "$q"
done
echo
$docqa --index .magpie status
for q in "how do I upgrade without losing my data?" \
         "what does error E42 mean?"; do
  echo
  echo "\$ docqa ask \"$q\""
  $docqa --index .magpie ask --seed 7 "$q"
done
echo
echo "\$ docqa plugins list"
$docqa plugins list
echo
echo "\$ docqa plugins call solver roots '{\"polynomial\": \"x^3 - 6x^2 + 11x - 6 = 0\"}'"
$docqa plugins call solver roots '{"polynomial": "x^3 - 6x^2 + 11x - 6 = 0"}'
