#!/usr/bin/env bash
# Sets everything up, then runs the main job (scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 scripts/demo.py
