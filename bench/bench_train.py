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

from reidkit.utils import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected" / "bounding_box_train"
RUNS = ROOT / "runs" / "bench_train"
OUT = ROOT / "docs" / "benchmarks" / "cuhk03np_train"
CONFIG = ROOT / "configs" / "cuhk03np_imagenet.yaml"


def run(name: str, overrides: list[str], resume: bool) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [str(ROOT / ".venv" / "bin" / "reidkit"), "train", "--config", str(CONFIG), "--data", str(DATA),
           "--out", str(RUNS / name), *overrides] + (["--resume"] if resume else [])
    (RUNS / name).mkdir(parents=True, exist_ok=True)
    (RUNS / name / "overrides.json").write_text(json.dumps(overrides))
    subprocess.run(cmd, check=True, env=env)


def summarize_run(folder: Path) -> dict:
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    val_rows = [r for r in rows if "val" in r]
    best = max(val_rows, key=lambda r: r["val"]["mAP"], default=None)
    students = len(best.get("val_students", [])) if best else 0
    # each mutual student's own best epoch, as the model trained alone is reported at its best epoch
    student_best = [max(({**r["val_students"][i], "epoch": r["epoch"]} for r in val_rows), key=lambda v: v["mAP"])
                    for i in range(students)]
    overrides = json.loads((folder / "overrides.json").read_text()) if (folder / "overrides.json").exists() else []
    return {
        "name": folder.name,
        "finished": (folder / "summary.json").exists(),
        "best_row": best or {},
        "overrides": overrides,
        "epochs": len(rows),
        "best_epoch": best["epoch"] if best else None,
        "val": best["val"] if best else {},
        "last_val": next((r["val"] for r in reversed(rows) if "val" in r), {}),
        "student_best": student_best,
        # validation mAP per evaluated epoch (one list per model: the model, or each mutual student)
        "val_track": {"epoch": [r["epoch"] for r in val_rows],
                      "mAP": [[v["mAP"] for v in r.get("val_students", [r["val"]])] for r in val_rows]},
        "mean_epoch_seconds": sum(r["epoch_seconds"] for r in rows) / max(1, len(rows)),
        "train_images_per_second": sum(r["images_per_second"] for r in rows) / max(1, len(rows)),
        "train_minutes": sum(r["epoch_seconds"] for r in rows) / 60,
    }


RECIPE_RUNS = ("main",)
# Ablations of the recipe: each changes one thing and keeps the 57-58 min budget (epochs fill it: 128x64 is 2x
# cheaper per image, 256x128 2.6x dearer). size_128x64 is the previous recipe (110 epochs at 128x64).
ABLATIONS = {"main": "recipe: GeM, cut-out curriculum, CE pre-training, 192x96",
             "abl_pool_avg": "average pooling", "abl_pool_max": "max pooling",
             "abl_no_curriculum": "no curriculum (cut-out area 2-40% from the start)",
             "abl_no_pretrain": "no CE pre-training (CE + TriHard from epoch 1)",
             "size_128x64": "input 128x64", "abl_256x128": "input 256x128"}
NO_VAL_RUNS = ("s_no_val",)
# The loss table at the recipe's budget (192x96, 50 epochs): main is CE + TriHard.
LOSS_RUNS_RECIPE = {"loss_ce": "CE", "main": "CE + TriHard", "loss_msml": "CE + MSML",
                    "loss_quadruplet": "CE + quadruplet", "loss_quadruplet_cos": "CE + quadruplet, cosine distance",
                    "loss_soft_hard": "CE + soft-hard",
                    "loss_soft_hard_softplus": "CE + soft-hard, softplus instead of the margin (AGW)",
                    "loss_mutual": "mutual (2 students; alone = CE + TriHard)"}
# Follow-up variants: listed once they have been started, not as "not run" rows.
OPTIONAL_LOSS_RUNS = ("loss_quadruplet_cos", "loss_soft_hard_softplus")
# Short protocol (12 epochs, one thread): the loss-family preview of docs/benchmarks/losses_cuhk03np.md.
LOSS_RUNS = {"s_ce_only": "CE", "s_base": "CE + TriHard", "s_msml": "CE + MSML", "s_msml_w015": "CE + 0.15 x MSML",
             "s_quadruplet": "CE + quadruplet",
             "s_msml_cos": "CE + MSML, cosine distance", "s_soft_hard": "CE + soft-hard",
             "s_mutual": "mutual (2 students)",
             "s_mutual_norm": "mutual (2 students), metric term on normalised features",
             "s_base30": "CE + TriHard, 30 epochs",
             "s_aligned": "AlignedReID, 30 epochs"}
LOSS_OUT = ROOT / "docs" / "benchmarks" / "losses_cuhk03np"
LOSS_CURVES = ROOT / "docs" / "img" / "losses_cuhk03np_val_map.png"


def _fmt(v: dict, key: str) -> str:
    return f"{v[key]:.1f}" if key in v else "-"


ABLATION_SETTINGS = ("num_threads=1", "max_minutes=0")  # two one-thread runs side by side, the full schedule
SHORT_PROTOCOL = ("optim.epochs=12", "optim.pretrain_epochs=2", "optim.warmup_epochs=1", "eval_every=4",
                  "num_threads=1", "max_minutes=40")


def run_table(results: list[dict], changes: dict[str, str] | None = None) -> list[str]:
    """One row per run; with `changes` (run name -> what it changes) a "change" column is added."""
    labelled = changes is not None
    lines = ["| run | " + ("change | " if labelled else "") + "overrides | epochs | best epoch | val rank-1 | val mAP "
             "| val mINP | s/epoch | train img/s | train min |",
             "|---|" + ("---|" if labelled else "") + "---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        v = r["val"]
        short = all(o in r["overrides"] for o in SHORT_PROTOCOL)
        hidden = SHORT_PROTOCOL if short else ABLATION_SETTINGS
        overrides = [o for o in r["overrides"] if o not in hidden]
        protocol = ("short protocol" if short else "recipe") + ("" if r["finished"] else " (running)")
        change = f" {changes[r['name']]} |" if labelled else ""
        lines.append(f"| {r['name']} |{change} {' '.join([protocol] + overrides)} | {r['epochs']} "
                     f"| {r['best_epoch'] or '-'} | {_fmt(v, 'rank1')} | {_fmt(v, 'mAP')} | {_fmt(v, 'mINP')} "
                     f"| {r['mean_epoch_seconds']:.0f} | {r['train_images_per_second']:.1f} "
                     f"| {r['train_minutes']:.1f} |")
    return lines


def ablation_table(results: dict[str, dict]) -> list[str]:
    missing = [f"| {n} | {label} | (not run yet) | | | | | | | | |" for n, label in ABLATIONS.items()
               if n not in results]
    return run_table([results[n] for n in ABLATIONS if n in results], ABLATIONS) + missing


def loss_table(results: dict[str, dict], runs: dict[str, str] = LOSS_RUNS) -> list[str]:
    """One row per model: mutual students and AlignedReID's global / global+local inference get their own rows."""
    lines = ["| loss | run | best epoch | val rank-1 | val mAP | val mINP | train min |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, label in runs.items():
        r = results.get(name)
        if r is None:
            if name not in OPTIONAL_LOSS_RUNS:
                lines.append(f"| {label} | {name} | (not run) | | | | |")
            continue
        best = r["best_row"]
        variants = [(label, r["val"])]
        if r["student_best"]:
            variants = [(f"{label}: student {i + 1}", v) for i, v in enumerate(r["student_best"])]
        if "val_local" in best:
            variants = [(f"{label}: global distance", r["val"]),
                        (f"{label}: global + 1 x local (val_local)", best["val_local"])]
        run = name if r["finished"] else f"{name} (running: best of {r['epochs']} epochs so far)"
        for text, v in variants:
            lines.append(f"| {text} | {run} | {v.get('epoch', r['best_epoch'])} | {_fmt(v, 'rank1')} "
                         f"| {_fmt(v, 'mAP')} | {_fmt(v, 'mINP')} "
                         f"| {r['train_minutes']:.1f} |")
    return lines


def plot_val_tracks(results: dict[str, dict], runs: dict[str, str], path: Path) -> None:
    """Validation mAP against the epoch, one line per trained model (each mutual student its own line)."""
    from reidkit.training.plots import plot_metric_per_epoch

    series = []
    for name, label in runs.items():
        if name not in results:
            continue
        track = results[name]["val_track"]
        students = len(track["mAP"][0])
        for i, values in enumerate(zip(*track["mAP"])):
            text = label if students == 1 else f"{label}: student {i + 1}"
            series.append((text, track["epoch"], list(values), name))
    plot_metric_per_epoch(series, path, "validation mAP (%)", "CUHK03-NP validation (150 ids), recipe budget")


def replace_block(path: Path, tag: str, lines: list[str]) -> None:
    """Rewrite the generated block between <!-- tag --> markers, keeping the hand-written text around it."""
    begin, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    text = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail, path)


def table() -> None:
    results = {f.name: summarize_run(f) for f in sorted(RUNS.iterdir()) if (f / "log.jsonl").exists()}
    meta = {"machine": f"{os.cpu_count()} cores, {platform.machine()}", "python": platform.python_version(),
            "load_average_now": os.getloadavg(), "data": "CUHK03-NP detected train minus 150 validation ids (seed 0)"}
    atomic_write_json({"meta": meta, "runs": list(results.values())}, OUT.with_suffix(".json"))
    replace_block(OUT.with_suffix(".md"), "recipe-table", run_table([results[n] for n in RECIPE_RUNS if n in results]))
    replace_block(OUT.with_suffix(".md"), "ablation-table", ablation_table(results))
    replace_block(OUT.with_suffix(".md"), "no-val-table", run_table([results[n] for n in NO_VAL_RUNS if n in results]))
    losses = {n: results[n] for n in {**LOSS_RUNS_RECIPE, **LOSS_RUNS} if n in results}
    replace_block(LOSS_OUT.with_suffix(".md"), "loss-table-recipe", loss_table(losses, LOSS_RUNS_RECIPE))
    plot_val_tracks(losses, LOSS_RUNS_RECIPE, LOSS_CURVES)
    atomic_write_json({"meta": meta, "runs": list(losses.values())}, LOSS_OUT.with_suffix(".json"))
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
