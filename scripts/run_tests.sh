#!/usr/bin/env bash
# Set up (if needed) and run the lint + test suite. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests bench
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
# One pytest process for the whole suite. (Session 12 split the browser and Dask workers tests out after the process
# died with SIGSEGV following the browser test; the cause was two OpenVINO Cores destroyed in creation order, which
# left the main thread's alternate signal stack unmapped: reidkit now keeps one Core per process,
# tests/test_openvino_core.py.)
exec .venv/bin/python -m pytest -q
