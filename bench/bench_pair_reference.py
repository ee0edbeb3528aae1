"""A reference for the pair networks' verification target: the global-embedding recipe model scored on the very
validation pairs the IDLA / IDLA-NCC / MLS runs are measured on (CUHK03-NP detected, 150 carved-out identities,
seed 0, cross-camera positives each with one random negative).

Score of a pair = cosine similarity of the two L2-normalised embeddings (flip TTA). The threshold is chosen on
training-identity pairs (the embedding never saw the validation identities); the best threshold on the validation
pairs themselves is reported too, marked as an oracle. Writes docs/benchmarks/pair_reference.{json,md}.

    python bench/bench_pair_reference.py [--checkpoint runs/bench_train/main/best.pt]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from checkpoint_report import measured_or_published
from reidkit.checkpoint import load_checkpoint
from reidkit.data.pairs import balanced_pairs
from reidkit.data.records import split_arrays
from reidkit.data.split import carve_validation_records
from reidkit.inference.extractor import Extractor
from reidkit.metrics.verification import roc_curve, verification_report
from reidkit.training.pair import load_train_records
from reidkit.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected"
OUT = ROOT / "docs" / "benchmarks" / "pair_reference"
VAL_IDS, SPLIT_SEED, THRESHOLD_IDS = 150, 0, 150  # the pair configs' carve-out; training ids used for the threshold


def best_balanced_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold (pairs >= it are "same") with the highest balanced accuracy (TPR + TNR) / 2."""
    fpr, tpr, thresholds = roc_curve(scores, labels)
    return float(thresholds[int(np.argmax(tpr - fpr))])


def pair_scores(features: torch.Tensor, pairs) -> np.ndarray:
    first, second = torch.from_numpy(pairs.first), torch.from_numpy(pairs.second)
    return (features[first] * features[second]).sum(1).numpy()


def main() -> int:
    data = measured_or_published(__doc__.splitlines()[0], OUT.with_suffix(".json"), measure)
    lines = markdown(data)
    atomic_write_text("\n".join(lines) + "\n", OUT.with_suffix(".md"))
    print("\n".join(lines))
    return 0


def measure(checkpoint: Path) -> dict:
    torch.set_num_threads(1)
    split = carve_validation_records(load_train_records(DATA), VAL_IDS, SPLIT_SEED)
    val = split.query + split.gallery
    trained_on = {int(pid) for pid in load_checkpoint(checkpoint)["extra"]["label_map"]}
    _, val_pids, val_cams = split_arrays(val)
    if trained_on & set(val_pids.tolist()):
        raise SystemExit(f"{checkpoint}: trained on validation identities; use a model of the same carve-out")
    keep = set(sorted({r.pid for r in split.train})[:THRESHOLD_IDS])
    threshold_records = [r for r in split.train if r.pid in keep]
    _, thr_pids, thr_cams = split_arrays(threshold_records)

    extractor = Extractor(checkpoint, device="cpu", flip=True)
    val_pairs = balanced_pairs(val_pids, val_cams, np.random.default_rng(SPLIT_SEED), True)
    thr_pairs = balanced_pairs(thr_pids, thr_cams, np.random.default_rng(SPLIT_SEED), True)
    val_scores = pair_scores(torch.as_tensor(extractor.embed([r.path for r in val])), val_pairs)
    thr_scores = pair_scores(torch.as_tensor(extractor.embed([r.path for r in threshold_records])), thr_pairs)

    threshold = best_balanced_threshold(thr_scores, thr_pairs.label)
    oracle = best_balanced_threshold(val_scores, val_pairs.label)
    rows = {"threshold from training pairs": verification_report(val_scores, val_pairs.label, threshold),
            "oracle: best threshold on the validation pairs": verification_report(val_scores, val_pairs.label,
                                                                                   oracle)}
    return {"checkpoint": str(checkpoint.relative_to(ROOT)), "val_pairs": int(len(val_pairs.label)),
            "threshold_pairs": int(len(thr_pairs.label)), "rows": rows}


def markdown(data: dict) -> list[str]:
    rows = data["rows"]
    lines = ["# Reference: the global embedding on the pair networks' validation pairs", "",
             f"Produced by `bench/bench_pair_reference.py`. Model: `{data['checkpoint']}` (the CUHK03-NP CPU recipe, "
             "EfficientNet-Lite0 + GeM + BNNeck, trained on the same carve-out's 617 training identities; validation "
             "mAP 55.4). Pairs: the "
             f"{data['val_pairs']:,} balanced validation pairs of the IDLA / IDLA-NCC / MLS runs (150 carved-out "
             "identities, seed 0, every cross-camera positive pair with one random negative). Score = cosine "
             "similarity of the flip-averaged embeddings; threshold chosen on "
             f"{data['threshold_pairs']:,} pairs of {THRESHOLD_IDS} training identities built the same way.", "",
             "| threshold | value | balanced accuracy | accuracy | AUC |", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['threshold']:.3f} | {r['balanced_accuracy']:.1f}% | {r['accuracy']:.1f}% | "
                     f"{r['auc']:.3f} |")
    fair, best = rows["threshold from training pairs"], rows["oracle: best threshold on the validation pairs"]
    lines += ["", f"The embedding separates these pairs almost perfectly by rank (AUC {fair['auc']:.3f}), and a "
              f"well-placed threshold gives {best['balanced_accuracy']:.1f}% balanced accuracy, so the pair networks' "
              "90% target is reachable on this split by a model of this quality. A threshold chosen on training "
              f"identities is too strict ({fair['threshold']:.3f} against {best['threshold']:.3f}): the embedding "
              "scores its training identities' pairs higher than unseen ones, so at a fixed threshold verification "
              f"accuracy also depends on calibration across identities ({fair['balanced_accuracy']:.1f}%). The pair "
              "networks' own threshold is their softmax's (log-odds 0), learnt on training pairs in the same way.", ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
