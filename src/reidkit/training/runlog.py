"""The JSONL training log shared by every trainer: one line per finished epoch."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..utils import atomic_write_json, atomic_write_text


def restart_log(path: Path, up_to_epoch: int) -> list[dict]:
    """Rows of epochs <= up_to_epoch; later rows (from an interrupted run being resumed) are dropped on disk too."""
    rows = []
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["epoch"] <= up_to_epoch]
    atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), path)
    return rows


def append_log(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def start_run(out: Path, config: dict, start_epoch: int, max_minutes: float) -> tuple[list[dict], float]:
    """Start (or resume at `start_epoch`) a run in `out`: trim log.jsonl, record config.json, and return the kept
    log rows and the wall-time deadline (`time.monotonic()` seconds; inf without a budget)."""
    rows = restart_log(out / "log.jsonl", start_epoch)
    atomic_write_json(config, out / "config.json")
    return rows, time.monotonic() + max_minutes * 60 if max_minutes > 0 else math.inf
