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

# The service: start it, ask over HTTP (streamed), stop it gracefully.
echo
echo "\$ docqa serve --bind 127.0.0.1:0   (then curl)"
out=$(mktemp)
$docqa --index .magpie serve --bind 127.0.0.1:0 >"$out" &
server=$!
for _ in $(seq 150); do grep -q listening "$out" && break; sleep 0.2; done
url=$(sed -n 's/^docqa listening on //p' "$out")
echo "\$ curl $url/v1/search?q=grid+size&k=2"
curl -s "$url/v1/search?q=grid+size&k=2" | head -c 400; echo
echo "\$ curl -N $url/v1/query -d '{\"question\": \"what does error E42 mean?\", \"stream\": true}'"
curl -sN "$url/v1/query" -H 'content-type: application/json' \
  -d '{"question": "what does error E42 mean?", "stream": true, "seed": 7}' |
  sed -n 's/^data: {"text":"\(.*\)"}$/\1/p' | tr -d '\n'; echo
echo "(open $url/ in a browser for the web page; here the server is stopped now)"
kill -TERM $server; wait $server || true
rm -f "$out"
