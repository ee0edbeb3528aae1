"""Issue 25: can the teacher's own architecture be the fast student at a smaller input? Accuracy and speed of
OSNet-AIN x1.0 at input sizes below 256x128, without training.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/student_resolution.py [--model runs/best/best.pt]
        [--sizes 256x128 192x96 176x88 160x80] [--out docs/benchmarks/student_resolution.json]

Each model (the vendored Intel 0277 start, and the trained teacher when its checkpoint exists) embeds the
validation query and gallery (the 150-identity carve of ../shared's CUHK03-NP training folder) decoded at each
size, flip TTA, and is scored with the market protocol. Speed: the bare x1.0 backbone on 128 random images at
each size and each of `--batch-sizes`, torch with 2 threads, best of 3 rounds with the sizes alternated.
`speed_ratio` is each size at its best batch size against 256x128 at its own. A ratio at one shared batch of 64, as
this bench reported before session 19, favours the small inputs: at 64 the 256x128 activations overflow the caches,
and 256x128 runs about 2.5x faster at 8. `speed_ratio_at_batch_64` keeps that figure for comparison.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from reidkit.checkpoint import model_from_checkpoint  # noqa: E402
from reidkit.data.images import load_image_tensor  # noqa: E402
from reidkit.data.market import scan_image_folder  # noqa: E402
from reidkit.data.split import carve_validation_records  # noqa: E402
from reidkit.distance import compute_distance_matrix  # noqa: E402
from reidkit.inference.features import embed_tensor  # noqa: E402
from reidkit.metrics.rank import evaluate_rank_full  # noqa: E402
from reidkit.models import build_model  # noqa: E402
from reidkit.models.backbones import build_backbone  # noqa: E402
from reidkit.utils import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CUHK = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected" / "bounding_box_train"
OUT = ROOT / "docs" / "benchmarks" / "student_resolution.json"


def validation_scores(model: torch.nn.Module, size: tuple[int, int]) -> dict[str, float]:
    carved = carve_validation_records(scan_image_folder(CUHK).records, 150, seed=0)
    features = [embed_tensor(model, load_image_tensor([r.path for r in part], size, "stretch", False),
                             mean=model.input_mean, std=model.input_std, device=torch.device("cpu"), batch_size=64,
                             flip=True) for part in (carved.query, carved.gallery)]
    q, g = carved.query, carved.gallery
    result = evaluate_rank_full(compute_distance_matrix(*features).numpy(), np.array([r.pid for r in q]),
                                np.array([r.pid for r in g]), np.array([r.camid for r in q]),
                                np.array([r.camid for r in g]))
    return {"rank1": round(100 * float(result.cmc[0]), 1), "mAP": round(100 * float(result.mAP), 1)}


def backbone_speed(sizes: list[tuple[int, int]], batch_sizes: list[int], rounds: int = 3
                   ) -> dict[str, dict[str, float]]:
    """Best-of-`rounds` images/s of the bare backbone per input size and batch size (128 random images each)."""
    backbone = build_backbone("osnet_ain_x1_0", pretrained=False).eval()
    best = {(size, b): 0.0 for size in sizes for b in batch_sizes}
    with torch.inference_mode():
        for _ in range(rounds):
            for size in sizes:
                x = torch.randn(128, 3, *size)
                for b in batch_sizes:
                    start = time.perf_counter()
                    for chunk in x.split(b):
                        backbone(chunk)
                    best[size, b] = max(best[size, b], len(x) / (time.perf_counter() - start))
    return {f"{h}x{w}": {str(b): round(best[(h, w), b], 1) for b in batch_sizes} for h, w in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "best" / "best.pt")
    parser.add_argument("--sizes", nargs="+", default=["256x128", "192x96", "176x88", "160x80"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    models = {"intel_0277_start": build_model("embedding", backbone="osnet_ain_x1_0", pretrained=True,
                                              pooling="avg", bnneck=True).eval()}
    if args.model.is_file():
        models["teacher"] = model_from_checkpoint(args.model)[0].eval()
    load_before = os.getloadavg()[0]
    accuracy = {name: {f"{h}x{w}": validation_scores(model, (h, w)) for h, w in sizes}
                for name, model in models.items()}
    sweep = backbone_speed(sizes, args.batch_sizes)
    speed = {size: max(per_batch.values()) for size, per_batch in sweep.items()}
    base = speed[args.sizes[0]]
    result = {"validation": accuracy, "backbone_images_per_second": speed,
              "best_batch": {size: int(max(per_batch, key=per_batch.get)) for size, per_batch in sweep.items()},
              "speed_ratio": {k: round(v / base, 2) for k, v in speed.items()},
              "speed_ratio_at_batch_64": ({k: round(v["64"] / sweep[args.sizes[0]]["64"], 2) for k, v in sweep.items()}
                                          if 64 in args.batch_sizes else None),
              "sweep_images_per_second": sweep, "threads": 2,
              "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
              "torch": torch.__version__}
    atomic_write_json(result, args.out)
    for name, rows in accuracy.items():
        for size, row in rows.items():
            print(f"{name:18s} {size:8s} rank-1 {row['rank1']:5.1f}  mAP {row['mAP']:5.1f}  "
                  f"backbone {speed[size]:6.1f} img/s at batch {result['best_batch'][size]} "
                  f"({result['speed_ratio'][size]:.2f}x)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
