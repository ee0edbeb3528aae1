"""Under- or over-fitting? A pair-network run's best checkpoint on training identities vs validation identities.

    .venv/bin/python bench/bench_pair_fit.py runs/idla_bn_long [runs/... ...] [--checkpoint best.pt last.pt]

Both sides are scored the same way: eval mode (no dropout), no augmentation, 7,000 balanced cross-camera pairs
(every positive pair with a random negative, then a fixed random subset for the training identities; the run's own
fixed validation pairs). The training accuracy in log.jsonl is not this: it is measured with dropout, random shifts
and (in hard rounds) mined negatives. Writes docs/benchmarks/pair_fit.{json,md}, keeping the rows of runs not
scored this time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reidkit.checkpoint import load_checkpoint
from reidkit.config import from_dict
from reidkit.metrics.verification import best_threshold, verification_report
from reidkit.training.pair import PairTrainConfig, PairTrainer
from reidkit.utils import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected"
OUT = ROOT / "docs" / "benchmarks" / "pair_fit"
NUM_PAIRS = 7_000


def fit_report(run: Path, data: Path, work: Path, checkpoint: str = "best.pt") -> dict:
    payload = load_checkpoint(run / checkpoint)
    cfg = from_dict(PairTrainConfig, payload["config"])
    trainer = PairTrainer(cfg, work, data_root=data, show_progress=False)
    trainer.setup()
    trainer.model.load_state_dict(payload["model"])
    trainer.model.eval()
    scores, labels = trainer.training_pair_scores(False, False, NUM_PAIRS)
    train = verification_report(scores, labels, cfg.eval.threshold)
    val_scores = trainer.validation_scores(False, False)
    val = verification_report(val_scores, trainer.val_pairs.label, cfg.eval.threshold)
    threshold = best_threshold(scores, labels)  # fitted on the training-identity pairs only
    calibrated = verification_report(val_scores, trainer.val_pairs.label, threshold)
    keys = ("balanced_accuracy", "auc")
    name = run.name + ("" if checkpoint == "best.pt" else f" ({checkpoint})")
    return {"run": name, "epoch": payload["epoch"], "train_ids": {k: train[k] for k in keys},
            "val_ids": {k: val[k] for k in keys}, "pairs": int(labels.size),
            "train_threshold": threshold, "val_at_train_threshold": calibrated["balanced_accuracy"]}


def markdown(rows: list[dict]) -> str:
    lines = ["# Pair networks: training identities vs validation identities", "",
             "Best checkpoint of each run, eval mode, no augmentation, balanced cross-camera pairs "
             "(`bench/bench_pair_fit.py`). A small gap with both sides low = underfitting.", "",
             "Last columns: the threshold (log-odds) with the best balanced accuracy on the training-identity pairs, "
             "and the validation accuracy at that threshold (no validation label chooses it).", "",
             "| run | epoch | train ids: balanced acc. | train ids: AUC | val ids: balanced acc. | val ids: AUC "
             "| threshold fitted on train ids | val ids at that threshold |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, v = r["train_ids"], r["val_ids"]
        lines.append(f"| {r['run']} | {r['epoch']} | {t['balanced_accuracy']:.1f}% | {t['auc']:.3f} "
                     f"| {v['balanced_accuracy']:.1f}% | {v['auc']:.3f} | {r['train_threshold']:+.2f} "
                     f"| {r['val_at_train_threshold']:.1f}% |")
    return "\n".join(lines) + "\n"


def kept_rows(rescored: set[str]) -> list[dict]:
    """Rows of earlier invocations for runs not scored again, so the table grows run by run."""
    path = OUT.with_suffix(".json")
    if not path.is_file():
        return []
    return [row for row in json.loads(path.read_text())["runs"] if row["run"] not in rescored]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "pair_fit_work",
                        help="scratch output folder for the trainer (nothing is trained)")
    parser.add_argument("--checkpoint", nargs="+", default=["best.pt"],
                        help="checkpoint file(s) of each run to score, e.g. best.pt last.pt")
    args = parser.parse_args()
    rows = [fit_report(run, args.data, args.work, name) for run in args.runs for name in args.checkpoint]
    rows += kept_rows({row["run"] for row in rows})
    atomic_write_json({"runs": rows}, OUT.with_suffix(".json"))
    atomic_write_text(markdown(rows), OUT.with_suffix(".md"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
