"""The CUHK03-NP validation table of the part models (issue 26) from finished training runs: no training here.

Each row is one `reidkit train` run at the recipe's budget (configs/*_cuhk03np_cpu.yaml: same data, schedule,
losses and 57-minute cap; only the model differs), read from its folder: the best validation epoch (flip TTA),
epochs done, training images/s (mean over epochs) and wall minutes from log.jsonl, inference parameters (the
classifiers are training-only) from best.pt, and the pose set-up from the checkpoint's pose stats.

    .venv/bin/python bench/parts_table.py --run baseline=runs/baseline_today --run glad=runs/glad_cuhk03np ...
    .venv/bin/python bench/parts_table.py --markdown-only
Rows are merged into the existing JSON by run name, so runs done in different sessions build one table.
-> docs/benchmarks/parts_cuhk03np.json + .md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reidkit.checkpoint import load_checkpoint, model_from_checkpoint
from reidkit.config import load_config
from reidkit.models import build_model
from reidkit.training.config import TrainConfig
from reidkit.utils import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "parts_cuhk03np.json"
LABELS = {"baseline": "global baseline (recipe)", "glad": "GLAD", "spindle": "SpindleNet-style", "plnet": "PL-Net",
          "alignedreid": "AlignedReID, global descriptor"}


def inference_params(model: torch.nn.Module) -> float:
    """Millions of parameters without the classifiers (training-only)."""
    return sum(p.numel() for name, p in model.named_parameters() if "classifier" not in name) / 1e6


def read_run(name: str, folder: Path, notes: str) -> dict:
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in rows if "images_per_second" in r]
    summary = json.loads((folder / "summary.json").read_text())
    best = summary["best"]
    extra = load_checkpoint(folder / "best.pt").get("extra") or {}
    return {
        "run": name, "folder": str(folder), "model": summary["model"], "epochs_done": summary["epochs_done"],
        "best_epoch": best["epoch"], "rank1": round(best["rank1"], 1), "mAP": round(best["mAP"], 1),
        "mINP": round(best["mINP"], 1),
        "params_M": round(inference_params(model_from_checkpoint(folder / "best.pt")[0]), 2),
        "train_images_per_second": round(sum(r["images_per_second"] for r in epochs) / len(epochs), 1),
        "train_minutes": round(sum(r["epoch_seconds"] for r in epochs) / 60, 1),
        "val_mAP_by_epoch": {r["epoch"]: round(r["val"]["mAP"], 1) for r in rows if "val" in r},
        "pose": extra.get("pose"), "notes": notes, "measured": time.strftime("%Y-%m-%d"),
        "local_at_best": local_at_best(rows, best["epoch"], folder),
    }


def local_at_best(log: list[dict], epoch: int, folder: Path) -> dict | None:
    """AlignedReID: the global + local distance (val_local) of best.pt's epoch, the checkpoint a user evaluates
    with `--local-weight`, and the run's local weight; None for models without the local branch."""
    row = next((r for r in log if r.get("epoch") == epoch and "val_local" in r), None)
    if row is None:
        return None
    weight = json.loads((folder / "config.json").read_text()).get("val_local_weight", 1.0)
    return {**{k: round(row["val_local"][k], 1) for k in ("rank1", "mAP", "mINP")}, "weight": weight}


def recipe_baseline_row() -> dict:
    """The recipe's own run (docs/benchmarks/cuhk03np_train.json, run `main`: configs/cuhk03np_imagenet.yaml on the
    quiet machine) as the baseline row, so the part models compare with the documented recipe, not a re-run."""
    bench = json.loads((ROOT / "docs" / "benchmarks" / "cuhk03np_train.json").read_text())
    run = next(r for r in bench["runs"] if r["name"] == "main")
    cfg = load_config(TrainConfig, ROOT / "configs" / "cuhk03np_imagenet.yaml")
    model = build_model(cfg.model.name, **{**cfg.model.builder_kwargs(), "num_classes": 617,
                                           "input_size": (cfg.data.height, cfg.data.width)})
    val = run["val"]
    return {
        "run": "baseline", "folder": "docs/benchmarks/cuhk03np_train.json (run main)", "model": cfg.model.name,
        "epochs_done": run["epochs"], "best_epoch": run["best_epoch"], "rank1": round(val["rank1"], 1),
        "mAP": round(val["mAP"], 1), "mINP": round(val["mINP"], 1), "params_M": round(inference_params(model), 2),
        "train_images_per_second": round(run["train_images_per_second"], 1),
        "train_minutes": round(run["train_minutes"], 1),
        "val_mAP_by_epoch": {e: round(m[0], 1) for e, m in zip(run["val_track"]["epoch"], run["val_track"]["mAP"])},
        "pose": None, "notes": "the recipe's documented run (max_minutes 58)", "measured": "recipe run",
    }


def early_curve(row: dict) -> str:
    """Validation mAP at epochs 5-20: models of different speed compared at equal training, not equal time."""
    curve = {int(e): m for e, m in (row.get("val_mAP_by_epoch") or {}).items()}  # JSON keys are strings
    return " / ".join(str(curve.get(e, "-")) for e in (5, 10, 15, 20))


def markdown(data: dict) -> str:
    lines = [
        "# Part models on CUHK03-NP (validation, the recipe's budget)",
        "",
        "`bench/parts_table.py` from the training runs' folders. Each model trained with its "
        "`configs/<model>_cuhk03np_cpu.yaml`: the ImageNet 60-minute recipe `cuhk03np_imagenet.yaml` unchanged "
        "(192x96, EfficientNet-Lite0 from ImageNet, CE + batch-hard triplet, 50-epoch cosine schedule, "
        "57-minute wall-time cap) except the model. "
        "Validation: the 150 carved-out identities (seed 0), flip TTA, best epoch. Never a test split.",
        "",
        "| model | rank-1 | mAP | mINP | params (M, inference) | train images/s | epochs in 57 min | best epoch "
        "| val mAP at epochs 5 / 10 / 15 / 20 | measured | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(f"| {LABELS.get(r['run'], r['run'])} | {r['rank1']} | {r['mAP']} | {r['mINP']} | "
                     f"{r['params_M']} | {r['train_images_per_second']} | {r['epochs_done']} | {r['best_epoch']} | "
                     f"{early_curve(r)} | {r.get('measured', '')} | {r['notes']} |")
        if r.get("local_at_best"):
            loc = r["local_at_best"]
            lines.append(f"| {LABELS.get(r['run'], r['run'])} + local distance (same checkpoint, evaluation only) | "
                         f"{loc['rank1']} | {loc['mAP']} | {loc['mINP']} | {r['params_M']} | - | - | - | - | "
                         f"{r.get('measured', '')} | global euclidean + local distance (weight {loc['weight']:g}) |")
    for remark in data.get("remarks", []):  # one paragraph each
        lines += ["", remark]
    streams = data.get("glad_streams")
    if streams:  # bench/glad_streams.py
        lines += ["", f"GLAD's streams alone and combined (`bench/glad_streams.py {streams['checkpoint']}`: the "
                  f"same checkpoint, validation carve, flip TTA, pose found in {streams['pose_found']} images; "
                  f"load {streams['load_avg_1min']}):", "", "| streams | rank-1 | mAP | mINP |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {s['rank1']} | {s['mAP']} | {s['mINP']} |" for name, s in streams["scores"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="name=folder[=notes] (repeatable)")
    parser.add_argument("--remark", action="append", default=[], help="a paragraph under the table")
    parser.add_argument("--recipe-baseline", action="store_true",
                        help="(re)write the baseline row from the recipe's documented run")
    parser.add_argument("--markdown-only", action="store_true")
    args = parser.parse_args()
    if args.markdown_only:
        data = json.loads(OUT.read_text())
    else:
        # Runs accumulate across sessions (a run folder does not outlive its checkout): a new run replaces the
        # row of the same name, the others stay; remarks given now replace the old ones.
        data = json.loads(OUT.read_text()) if OUT.exists() else {"rows": [], "remarks": []}
        rows = {r["run"]: r for r in data["rows"]}
        for spec in args.run:
            name, folder, *notes = spec.split("=", 2)
            rows[name] = read_run(name, Path(folder), notes[0] if notes else "")
        if args.recipe_baseline:
            rows["baseline"] = recipe_baseline_row()
        order = list(LABELS)
        data["rows"] = sorted(rows.values(), key=lambda r: order.index(r["run"]) if r["run"] in order else len(order))
        if args.remark:
            data["remarks"] = args.remark
        atomic_write_json(data, OUT)
    atomic_write_text(markdown(data), OUT.with_suffix(".md"))


if __name__ == "__main__":
    main()
