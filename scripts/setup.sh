#!/usr/bin/env bash
# Sets up a fresh Debian machine: system packages, pinned Python packages,
# our package (C++ engine + Python API, built by `pip install .`), and the
# reference tensorizer 2.12.1 in its own virtual environment (.venv-ref; it
# has the same import name, so it cannot share site-packages with ours).
# Idempotent: re-running only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# curl (the command): the reference tensorizer reads s3:// objects by running it.
APT_PACKAGES=(g++ ninja-build libssl-dev zlib1g-dev libisal-dev libsodium-dev libcurl4-openssl-dev nginx-light nlohmann-json3-dev libgtest-dev clang libclang-rt-14-dev curl redis-server)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== pip install (pinned test requirements)"
python3 -m pip install -q -r requirements-test.txt 2>&1 | grep -v -E "^WARNING: (Running pip|Location)" || true

echo "== pip install . (C++ engine + Python package)"
python3 -m pip install -q --no-build-isolation . 2>&1 | grep -v -E "^WARNING: (Running pip|Location)" || true
python3 -c "import tensorizer, tensorizer._core; print('tensorizer installed at', tensorizer.__file__)"

# The reference must come from PyPI into the venv itself. Our package also
# satisfies "tensorizer==2.12.1" (a local version label), and the venv sees
# system site-packages, so pip would otherwise consider it installed.
ref_ok() {
  .venv-ref/bin/python - <<'PY' 2>/dev/null
import os, sys, tensorizer
inside = os.path.realpath(tensorizer.__file__).startswith(os.path.realpath(".venv-ref"))
ours = os.path.exists(os.path.join(os.path.dirname(tensorizer.__file__), "_errors.py"))
import torch
same_torch = not os.path.realpath(torch.__file__).startswith(os.path.realpath(".venv-ref"))
sys.exit(0 if inside and not ours and same_torch and tensorizer.__version__ == "2.12.1" else 1)
PY
}
if [ ! -x .venv-ref/bin/python ] || ! ref_ok; then
  echo "== reference tensorizer 2.12.1 in .venv-ref"
  python3 -m venv --system-site-packages .venv-ref
  # --no-deps: its "torch>=1.9" would otherwise pull the newest CUDA build
  # (5+ GB) into the venv. The system's pinned CPU torch, numpy, psutil,
  # boto3 and redis serve it; the rest of its dependencies go in the venv.
  .venv-ref/bin/python -m pip install -q --ignore-installed --no-deps tensorizer==2.12.1 2>&1 | grep -v -E "^WARNING: (Running pip|Location)" || true
  .venv-ref/bin/python -m pip install -q "protobuf>=3.19.5" "hiredis>=2.2.0" "libnacl>=2.1.0" 2>&1 | grep -v -E "^WARNING: (Running pip|Location)" || true
  ref_ok || { echo "could not install the reference tensorizer 2.12.1 into .venv-ref" >&2; exit 1; }
fi
.venv-ref/bin/python -c "import tensorizer; print('reference tensorizer', tensorizer.__version__, 'at', tensorizer.__file__)"
