"""The CUHK03-NP validation table of the part models (issue 26) from finished training runs: no training here.

Each row is one `reidkit train` run at the recipe's budget (configs/*_cuhk03np_cpu.yaml: same data, schedule,
losses and 57-minute cap; only the model differs), read from its folder: the best validation epoch (flip TTA),
epochs done, training images/s (mean over epochs) and wall minutes from log.jsonl, inference parameters (the
classifiers are training-only) from best.pt, and the pose set-up from the checkpoint's pose stats.

    .venv/bin/python bench/parts_table.py --run baseline=runs/baseline_today --run glad=runs/glad_cuhk03np ...
    .venv/bin/python bench/parts_table.py --markdown-only
-> docs/benchmarks/parts_cuhk03np.json + .md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reidkit.checkpoint import load_checkpoint, model_from_checkpoint
from reidkit.utils import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "parts_cuhk03np.json"
LABELS = {"baseline": "global baseline (recipe)", "glad": "GLAD", "spindle": "SpindleNet-style", "plnet": "PL-Net",
          "alignedreid": "AlignedReID (global + local)"}


def inference_params(checkpoint: Path) -> float:
    model, _ = model_from_checkpoint(checkpoint)
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
        "mINP": round(best["mINP"], 1), "params_M": round(inference_params(folder / "best.pt"), 2),
        "train_images_per_second": round(sum(r["images_per_second"] for r in epochs) / len(epochs), 1),
        "train_minutes": round(sum(r["epoch_seconds"] for r in epochs) / 60, 1),
        "pose": extra.get("pose"), "notes": notes,
    }


def markdown(data: dict) -> str:
    lines = [
        "# Part models on CUHK03-NP (validation, the recipe's budget)",
        "",
        "`bench/parts_table.py` from the training runs' folders. Each model trained with its "
        "`configs/<model>_cuhk03np_cpu.yaml`: the 60-minute recipe unchanged (192x96, EfficientNet-Lite0 from "
        "ImageNet, CE + batch-hard triplet, 50-epoch cosine schedule, 57-minute wall-time cap) except the model. "
        "Validation: the 150 carved-out identities (seed 0), flip TTA, best epoch. Never a test split.",
        "",
        "| model | rank-1 | mAP | mINP | params (M, inference) | train images/s | epochs in 57 min | best epoch "
        "| notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        lines.append(f"| {LABELS.get(r['run'], r['run'])} | {r['rank1']} | {r['mAP']} | {r['mINP']} | "
                     f"{r['params_M']} | {r['train_images_per_second']} | {r['epochs_done']} | {r['best_epoch']} | "
                     f"{r['notes']} |")
    lines += ["", *data.get("remarks", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="name=folder[=notes] (repeatable)")
    parser.add_argument("--remark", action="append", default=[], help="a paragraph under the table")
    parser.add_argument("--markdown-only", action="store_true")
    args = parser.parse_args()
    if args.markdown_only:
        data = json.loads(OUT.read_text())
    else:
        rows = []
        for spec in args.run:
            name, folder, *notes = spec.split("=", 2)
            rows.append(read_run(name, Path(folder), notes[0] if notes else ""))
        data = {"rows": rows, "remarks": args.remark}
        atomic_write_json(data, OUT)
    atomic_write_text(markdown(data), OUT.with_suffix(".md"))


if __name__ == "__main__":
    main()
