#!/usr/bin/env bash
# The GPU check on a bare machine with one H100/H200 (see bench/gpu_check.py): installs
# what the machine lacks from wheels in .whl/ when there are any, then runs the check.
# Results: $OUT/gpu_check.json, else bench/results/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -c "import vllm" 2>/dev/null || echo "vllm is not installed here: training only" >&2
PYTHONUNBUFFERED=1 exec python3 bench/gpu_check.py "$@"
