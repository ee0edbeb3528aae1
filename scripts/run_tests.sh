#!/usr/bin/env bash
# Set up (if needed) and run the lint + test suite. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests bench
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
# The browser test and the Dask workers test run in pytest processes of their own. After the rest of the suite in
# one process, the process died with SIGSEGV right after the browser test (4 of 4 full runs beside ../shared in
# session 12, at the next test: the workers' first LocalCluster start, or XQDA's first test when the workers test
# was left out), with no faulthandler dump and no kernel fault record; never in runs of either half of the suite
# with them. Not understood yet: tracked on issue 27.
.venv/bin/python -m pytest -q --ignore=tests/test_web_browser.py --ignore=tests/test_workers.py
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_web_browser.py
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_workers.py
