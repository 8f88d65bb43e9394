#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with EchoRAG and its test tools,
# plus Debian's chromium for the browser tests when apt is available.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first and pinned: the CPU build; anything unpinned would pull CUDA wheels.
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet -e ".[dev]"

if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not found; browser tests will be skipped (apt-get install chromium)" >&2
  fi
fi
# Korean glyphs for the browser tests' screenshots (optional: tests pass without them).
if [ ! -d /usr/share/fonts/opentype/noto ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk >/dev/null \
    || echo "note: fonts-noto-cjk not installed; screenshots will show boxes for Korean" >&2
fi
echo "EchoRAG is set up: source .venv/bin/activate"
