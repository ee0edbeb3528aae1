"""Train the CUHK03-NP CPU recipe (and its ablations) and tabulate validation results.

    .venv/bin/python bench/bench_train.py run main                          # the recipe as configured
    .venv/bin/python bench/bench_train.py run pool_avg model.pooling=avg     # an ablation = overrides
    .venv/bin/python bench/bench_train.py table                             # docs/benchmarks/cuhk03np_train.{json,md}

Each run lives in runs/bench_train/<name>/ (resumable with `run NAME --resume`). Validation = 150 identities
carved out of the CUHK03-NP training folder (seed 0); the official test split is never used here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected" / "bounding_box_train"
RUNS = ROOT / "runs" / "bench_train"
OUT = ROOT / "docs" / "benchmarks" / "cuhk03np_train"
CONFIG = ROOT / "configs" / "cuhk03np_cpu.yaml"


def run(name: str, overrides: list[str], resume: bool) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [str(ROOT / ".venv" / "bin" / "reidkit"), "train", "--config", str(CONFIG), "--data", str(DATA),
           "--out", str(RUNS / name), *overrides] + (["--resume"] if resume else [])
    (RUNS / name).mkdir(parents=True, exist_ok=True)
    (RUNS / name / "overrides.json").write_text(json.dumps(overrides))
    subprocess.run(cmd, check=True, env=env)


def summarize_run(folder: Path) -> dict:
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    best = max((r for r in rows if "val" in r), key=lambda r: r["val"]["mAP"], default=None)
    overrides = json.loads((folder / "overrides.json").read_text()) if (folder / "overrides.json").exists() else []
    return {
        "name": folder.name,
        "overrides": overrides,
        "epochs": len(rows),
        "best_epoch": best["epoch"] if best else None,
        "val": best["val"] if best else {},
        "last_val": next((r["val"] for r in reversed(rows) if "val" in r), {}),
        "mean_epoch_seconds": sum(r["epoch_seconds"] for r in rows) / max(1, len(rows)),
        "train_images_per_second": sum(r["images_per_second"] for r in rows) / max(1, len(rows)),
        "train_minutes": sum(r["epoch_seconds"] for r in rows) / 60,
    }


def table() -> None:
    results = [summarize_run(f) for f in sorted(RUNS.iterdir()) if (f / "log.jsonl").exists()]
    meta = {"machine": f"{os.cpu_count()} cores, {platform.machine()}", "python": platform.python_version(),
            "load_average_now": os.getloadavg(), "data": "CUHK03-NP detected train minus 150 validation ids (seed 0)"}
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": results}, indent=2) + "\n")
    lines = ["| run | overrides | epochs | best epoch | val rank-1 | val mAP | val mINP | s/epoch | train img/s "
             "| train min |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        v = r["val"]
        lines.append(f"| {r['name']} | {' '.join(r['overrides']) or '(recipe)'} | {r['epochs']} | {r['best_epoch']} "
                     f"| {v.get('rank1', float('nan')):.1f} | {v.get('mAP', float('nan')):.1f} "
                     f"| {v.get('mINP', float('nan')):.1f} | {r['mean_epoch_seconds']:.0f} "
                     f"| {r['train_images_per_second']:.1f} | {r['train_minutes']:.1f} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("name")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--resume", action="store_true")
    sub.add_parser("table")
    args = parser.parse_args()
    if args.cmd == "run":
        if not DATA.is_dir():
            print(f"CUHK03-NP training folder not found at {DATA}", file=sys.stderr)
            return 2
        run(args.name, args.overrides, args.resume)
    table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
