#!/usr/bin/env bash
# The GPU check, for a lent NVIDIA machine (no network): installs the carried
# CPython 3.12 wheel and its carried dependencies into a venv over the
# machine's torch, runs the gpu-marked tests (tests/test_staging.py), then
# bench/bench_gpu.py (a 4 GiB model). About 8 minutes. See bench/README.md
# for building what it carries (bench/out/gpu-carry/).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=bench/out/gpu-carry
PY=${PYTHON:-python3}
VENV=${TMPDIR:-/tmp}/tzr-gpu-venv
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install -q --no-index --find-links "$CARRY/wheels" "$CARRY"/wheels/tensorizer-*-cp312-*.whl pytest
"$VENV/bin/python" -c "import torch, tensorizer; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('tensorizer', tensorizer.__file__)"
echo "== gpu tests"
timeout 240 "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m gpu tests/test_staging.py
echo "== benchmark"
ref=()
[ -d "$CARRY/ref-site" ] && ref=(--ref-site "$CARRY/ref-site")
timeout 300 "$VENV/bin/python" bench/bench_gpu.py --size-gib 4 --reps 2 "${ref[@]}" --json "${OUT:-bench/out}/gpu.json"
