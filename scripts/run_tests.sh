#!/usr/bin/env bash
# Set up (if needed) and run the lint + test suite. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -q "$@"
