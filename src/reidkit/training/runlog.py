"""The JSONL training log shared by every trainer: one line per finished epoch."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

from ..errors import TrainingError
from ..utils import atomic_write_json, atomic_write_text


def restart_log(path: Path, up_to_epoch: int) -> list[dict]:
    """Rows of epochs <= up_to_epoch; later rows (from an interrupted run being resumed) are dropped on disk too."""
    rows = read_log(path) if path.exists() else []
    rows = [r for r in rows if r["epoch"] <= up_to_epoch]
    atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), path)
    return rows


def read_log(path: Path) -> list[dict]:
    """The rows of log.jsonl. A torn last line (a kill during its append) is dropped with a warning; a bad line
    elsewhere is corruption the run cannot be resumed over (TrainingError naming the file and line)."""
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for n, line in lines:
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError("not an epoch row")
        except ValueError as exc:
            if n == lines[-1][0]:
                warnings.warn(f"{path}: line {n} is incomplete (torn by an interrupted write); ignoring it",
                              stacklevel=2)
                break
            raise TrainingError(f"{path}: line {n} is not a log row ({exc}); the log is corrupt: repair or "
                                "remove that line, or start a new run") from None
        rows.append(row)
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
