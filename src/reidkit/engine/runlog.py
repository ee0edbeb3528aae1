"""The JSONL training log shared by every trainer: one line per finished epoch."""

from __future__ import annotations

import json
from pathlib import Path

from ..utils import atomic_write_text


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
