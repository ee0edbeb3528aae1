#!/usr/bin/env bash
# Set up (if needed) and run the lint + test suite. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests bench
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
# tests/test_workers.py runs in a pytest process of its own. Run after the rest of the suite in one process, its
# first Dask LocalCluster start ended that process with SIGSEGV (3 of 3 full runs beside ../shared in session 12,
# no faulthandler dump, no kernel fault record; never when it runs alone or after large subsets of the suite).
# Not understood yet: tracked on issue 27.
.venv/bin/python -m pytest -q --ignore=tests/test_workers.py
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_workers.py
