"""Command line shared by the benches that measure one trained checkpoint and publish a JSON + Markdown report."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from reidkit.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CHECKPOINT = ROOT / "runs" / "bench_train" / "main" / "best.pt"


def measured_or_published(description: str, out_json: Path, measure: Callable[[Path], dict]) -> dict:
    """Parse --checkpoint / --markdown-only; return the published data (--markdown-only) or measure(checkpoint),
    written atomically to `out_json` first."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", type=Path, default=RECIPE_CHECKPOINT)
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing .json")
    args = parser.parse_args()
    if args.markdown_only:
        return json.loads(out_json.read_text())
    data = measure(args.checkpoint.resolve())
    atomic_write_json(data, out_json)
    return data
