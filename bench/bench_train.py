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
        "best_row": best or {},
        "overrides": overrides,
        "epochs": len(rows),
        "best_epoch": best["epoch"] if best else None,
        "val": best["val"] if best else {},
        "last_val": next((r["val"] for r in reversed(rows) if "val" in r), {}),
        "mean_epoch_seconds": sum(r["epoch_seconds"] for r in rows) / max(1, len(rows)),
        "train_images_per_second": sum(r["images_per_second"] for r in rows) / max(1, len(rows)),
        "train_minutes": sum(r["epoch_seconds"] for r in rows) / 60,
    }


RECIPE_RUNS = ("main",)
# Short protocol (12 epochs, one thread, two runs at a time): the ablations of the recipe ...
ABLATION_RUNS = ("s_base", "s_pool_avg", "s_pool_max", "s_no_curriculum", "s_no_pretrain", "s_256x128", "s_no_val")
# ... and the loss family of docs/benchmarks/losses_cuhk03np.md, all against s_base (= CE + TriHard).
LOSS_RUNS = {"s_ce_only": "CE", "s_base": "CE + TriHard", "s_msml": "CE + MSML", "s_quadruplet": "CE + quadruplet",
             "s_soft_hard": "CE + soft-hard", "s_mutual": "mutual (2 students)", "s_base30": "CE + TriHard, 30 epochs",
             "s_aligned": "AlignedReID, 30 epochs"}
LOSS_OUT = ROOT / "docs" / "benchmarks" / "losses_cuhk03np"


def _fmt(v: dict, key: str) -> str:
    return f"{v[key]:.1f}" if key in v else "-"


SHORT_PROTOCOL = ("optim.epochs=12", "optim.pretrain_epochs=2", "optim.warmup_epochs=1", "eval_every=4",
                  "num_threads=1", "max_minutes=40")


def run_table(results: list[dict]) -> list[str]:
    lines = ["| run | overrides | epochs | best epoch | val rank-1 | val mAP | val mINP | s/epoch | train img/s "
             "| train min |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        v = r["val"]
        changes = [o for o in r["overrides"] if o not in SHORT_PROTOCOL]
        protocol = "short protocol" if len(changes) < len(r["overrides"]) else "recipe"
        lines.append(f"| {r['name']} | {' '.join([protocol] + changes)} | {r['epochs']} | {r['best_epoch'] or '-'} "
                     f"| {_fmt(v, 'rank1')} | {_fmt(v, 'mAP')} | {_fmt(v, 'mINP')} | {r['mean_epoch_seconds']:.0f} "
                     f"| {r['train_images_per_second']:.1f} | {r['train_minutes']:.1f} |")
    return lines


def loss_table(results: dict[str, dict]) -> list[str]:
    """One row per model: mutual students and AlignedReID's global / global+local inference get their own rows."""
    lines = ["| loss | run | val rank-1 | val mAP | val mINP | train min |", "|---|---|---:|---:|---:|---:|"]
    for name, label in LOSS_RUNS.items():
        r = results.get(name)
        if r is None:
            lines.append(f"| {label} | {name} | (not run) | | | |")
            continue
        best = r["best_row"]
        variants = [(label, r["val"])]
        if "val_students" in best:
            variants = [(f"{label}: student {i + 1}", v) for i, v in enumerate(best["val_students"])]
        if "val_local" in best:
            variants = [(f"{label}: global distance", r["val"]),
                        (f"{label}: global + 1 x local (val_local)", best["val_local"])]
        for text, v in variants:
            lines.append(f"| {text} | {name} | {_fmt(v, 'rank1')} | {_fmt(v, 'mAP')} | {_fmt(v, 'mINP')} "
                         f"| {r['train_minutes']:.1f} |")
    return lines


def replace_block(path: Path, tag: str, lines: list[str]) -> None:
    """Rewrite the generated block between <!-- tag --> markers, keeping the hand-written text around it."""
    begin, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    text = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)


def table() -> None:
    results = {f.name: summarize_run(f) for f in sorted(RUNS.iterdir()) if (f / "log.jsonl").exists()}
    meta = {"machine": f"{os.cpu_count()} cores, {platform.machine()}", "python": platform.python_version(),
            "load_average_now": os.getloadavg(), "data": "CUHK03-NP detected train minus 150 validation ids (seed 0)"}
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": list(results.values())}, indent=2) + "\n")
    replace_block(OUT.with_suffix(".md"), "recipe-table", run_table([results[n] for n in RECIPE_RUNS if n in results]))
    replace_block(OUT.with_suffix(".md"), "ablation-table",
                  run_table([results[n] for n in ABLATION_RUNS if n in results]))
    losses = {n: results[n] for n in LOSS_RUNS if n in results}
    LOSS_OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": list(losses.values())}, indent=2) + "\n")
    replace_block(LOSS_OUT.with_suffix(".md"), "loss-table", loss_table(losses))
    print("\n".join(loss_table(losses)))


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
