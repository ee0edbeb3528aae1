#!/usr/bin/env bash
# Set up (if needed) and run the demo: synthetic data -> train -> evaluate -> report folder.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/reidkit demo --out "${1:-runs/demo}"
