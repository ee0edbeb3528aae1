"""What PL-Net's unsupervised parts look like on real crops: CUHK03-NP, pretrained EfficientNet-Lite0.

The channels are clustered (K = 6) on 64 crops of ../shared/datasets/cuhk03np-detected/bounding_box_train
(every 60th file, 192x96, last_stride 1: a 12x6 map), then the part boxes of 32 other crops are measured for
several `box_quantile` values: mean box (row0, row1, col0, col1) and mean area in cells. This is how the default
box_quantile (0.25) was chosen (docs/models.md, "PL-Net").

    nice -n 10 .venv/bin/python bench/plnet_parts.py   -> docs/benchmarks/plnet_parts.json
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from reidkit.data.images import load_image_tensor  # noqa: E402
from reidkit.data.transforms import normalize  # noqa: E402
from reidkit.models import build_model  # noqa: E402
from reidkit.models.plnet import part_boxes, peak_positions  # noqa: E402
from reidkit.utils import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/datasets/cuhk03np-detected/bounding_box_train"


def main() -> None:
    torch.set_num_threads(2)
    paths = sorted(str(p) for p in DATA.glob("*.jpg"))[::60][:96]
    images = load_image_tensor(paths, (192, 96), "stretch", False)
    model = build_model("plnet", backbone="efficientnet_lite0", pretrained=True, last_stride=1, parts=6,
                        num_classes=10, input_size=(192, 96)).eval()
    with torch.no_grad():
        maps = model.backbone(normalize(images, model.input_mean, model.input_std))
    assignment = model.fit_parts(maps[:64])
    _, _, h, w = maps.shape
    mean_peaks = peak_positions(maps[:64]).double().mean(0)
    result = {"images": {"clustered": 64, "measured": 32, "source": str(DATA.relative_to(ROOT.parent))},
              "feature_map": [h, w], "channels_per_part": np.bincount(assignment.numpy(), minlength=6).tolist(),
              "part_centre_rows": [round(float(mean_peaks[assignment == k, 0].mean()), 2) for k in range(6)],
              "boxes": {}}
    for q in (0.1, 0.25, 0.4):
        boxes = part_boxes(peak_positions(maps[64:]), assignment, 6, h, w, q).float()
        area = ((boxes[..., 1] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 2] + 1)).mean(0)
        result["boxes"][str(q)] = {"mean_box": [[round(v, 1) for v in b] for b in boxes.mean(0).tolist()],
                                   "mean_area_cells": [round(v, 1) for v in area.tolist()]}
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    atomic_write_json(result, ROOT / "docs/benchmarks/plnet_parts.json")
    print(result)


if __name__ == "__main__":
    main()
