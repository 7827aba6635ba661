#!/usr/bin/env bash
# Tools the service tests drive docqa with (examples/docqa/tests/serve.rs):
# Debian's Chromium with Playwright (tests/web) for the web page, and the real
# `openai` Python package (tests/clients) for the OpenAI-compatible API.
# Idempotent; scripts/test.sh calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    echo "Installing Chromium (Debian package) for the web page test..."
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
    echo "error: Node.js (node, npm) is needed for the web page test: install Debian's nodejs and npm" >&2
    exit 1
fi
if [ ! -d tests/web/node_modules/playwright-core ]; then
    (cd tests/web && npm ci --no-audit --no-fund --silent)
fi

VENV=target/test-tools/venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
fi
