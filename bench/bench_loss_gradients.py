"""How hard each ranking loss pushes on the embeddings: loss value and gradient at the features of one real
P x K batch (CUHK03-NP training images, 16 identities x 4), at ImageNet initialisation and at a trained checkpoint.

The trainer adds `loss.metric_weight x metric loss` to the CE on the same backbone, so a loss whose gradient is
much larger than TriHard's (the recipe's, tuned with weight 1) needs a smaller weight. Writes
docs/benchmarks/loss_gradients.{json,md}.

    python bench/bench_loss_gradients.py [--checkpoint runs/bench_train/main/best.pt]
"""

from __future__ import annotations

import argparse
import collections
from dataclasses import asdict
from pathlib import Path

import torch

from reidkit.config import load_config
from reidkit.data.market import parse_market_name
from reidkit.data.store import load_image_tensor
from reidkit.engine.checkpoint import model_from_checkpoint
from reidkit.engine.config import TrainConfig
from reidkit.engine.transforms import normalize
from reidkit.losses import build_loss
from reidkit.models import build_model
from reidkit.utils import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected" / "bounding_box_train"
OUT = ROOT / "docs" / "benchmarks" / "loss_gradients"
RECIPE = ROOT / "configs" / "cuhk03np_cpu.yaml"
LOSSES = {"triplet_batch_hard": {"margin": 0.3}, "msml": {"margin": 0.3}, "soft_hard": {"margin": 0.3},
          "quadruplet": {"metric": "euclidean", "alpha": 0.3, "beta": 0.15, "ohnm": True}}


def pk_batch(p: int = 16, k: int = 4) -> tuple[list[Path], torch.Tensor]:
    """The first p identities (sorted) with >= k images; their first k images each."""
    by_id: dict[int, list[Path]] = collections.defaultdict(list)
    for path in sorted(DATA.glob("*.jpg")):
        by_id[parse_market_name(path.name)[0]].append(path)
    ids = [pid for pid in sorted(by_id) if len(by_id[pid]) >= k][:p]
    return [path for pid in ids for path in by_id[pid][:k]], torch.arange(p).repeat_interleave(k)


def gradient_stats(features: torch.Tensor, labels: torch.Tensor) -> dict[str, dict[str, float]]:
    out = {}
    for name, cfg in LOSSES.items():
        f = features.detach().clone().requires_grad_(True)
        loss = build_loss(name, **cfg)(f, labels)
        loss.backward()
        rows = f.grad.norm(dim=1)
        out[name] = {"loss": loss.item(), "grad_norm": f.grad.norm().item(),
                     "rows_with_gradient": int((rows > 0).sum()), "max_row_grad_norm": rows.max().item()}
    return out


def measure(checkpoint: Path) -> dict:
    torch.manual_seed(0)
    paths, labels = pk_batch()
    cfg = load_config(TrainConfig, RECIPE)  # the recipe's model, so this bench follows the recipe when it changes
    model_cfg = {k: v for k, v in asdict(cfg.model).items() if k != "name" and v is not None}
    models = {"ImageNet init": build_model(cfg.model.name, **model_cfg, num_classes=617,
                                           input_size=(cfg.data.height, cfg.data.width))}
    if checkpoint.is_file():
        models[f"trained ({checkpoint.relative_to(ROOT)})"] = model_from_checkpoint(checkpoint)[0]
    results = {}
    for label, model in models.items():
        images = load_image_tensor(paths, model.input_size, show_progress=False)
        model.train()  # the trainer's features: pre-BNNeck, un-normalised
        with torch.no_grad():
            features = model(normalize(images, model.input_mean, model.input_std))["features"]
        distances = torch.cdist(features, features)
        results[label] = {"feature_norm": features.norm(dim=1).mean().item(), "mean_distance": distances.mean().item(),
                          "losses": gradient_stats(features, labels)}
    return {"batch": f"{len(paths)} images, 16 ids x 4, {DATA.name}", "results": results}


def table(data: dict) -> list[str]:
    lines = ["| model | loss | loss value | grad norm (batch) | rows with gradient | max grad norm (row) | "
             "grad norm / TriHard's |", "|---|---|---:|---:|---:|---:|---:|"]
    for label, r in data["results"].items():
        base = r["losses"]["triplet_batch_hard"]["grad_norm"]
        for name, s in r["losses"].items():
            ratio = f"{s['grad_norm'] / base:.1f}" if base > 0 else "-"
            lines.append(f"| {label} | {name} | {s['loss']:.3f} | {s['grad_norm']:.3f} | {s['rows_with_gradient']} | "
                         f"{s['max_row_grad_norm']:.3f} | {ratio} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "bench_train" / "main" / "best.pt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = measure(args.checkpoint.resolve())
    atomic_write_json(data, OUT.with_suffix(".json"))
    scale = ", ".join(f"{label}: feature norm {r['feature_norm']:.1f}, mean distance {r['mean_distance']:.1f}"
                      for label, r in data["results"].items())
    text = ["# Gradient of each ranking loss at the embeddings (one real P x K batch)", "",
            f"Produced by `bench/bench_loss_gradients.py`. Batch: {data['batch']}; features = the trainer's "
            f"pre-BNNeck 1280-d features of EfficientNet-Lite0 + GeM at 192x96 ({scale}). Margins as in the "
            "recipe (0.3; quadruplet alpha 0.3, beta 0.15, hard-mined).", "", *table(data), "",
            "MSML is one hinge term per batch (as its paper defines it), so its whole gradient lands on the four "
            "embeddings of the hardest positive and negative pair, each with unit norm; the mean-reduced losses spread "
            "theirs over the batch. Beside CE, with the weight tuned for TriHard (1), MSML's steps dominate the "
            "backbone's; [losses_cuhk03np.md](losses_cuhk03np.md) runs it at `loss.metric_weight` 0.15.", ""]
    atomic_write_text("\n".join(text), OUT.with_suffix(".md"))
    print("\n".join(table(data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
