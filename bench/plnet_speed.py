"""PL-Net training and inference speed against the global embedding model, CUHK03-NP recipe settings.

Random pixels at the recipe's 192x96 input, batch 64 (P 16 x K 4), EfficientNet-Lite0, channels-last, 2 threads:
a few optimiser steps of each model (id + triplet losses, PL-Net also the part loss) and inference on 256 images.
Not a training run: it says what one epoch costs. Parameters counted on the models as the configs build them.

    nice -n 10 .venv/bin/python bench/plnet_speed.py   -> docs/benchmarks/plnet_speed.json
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from reidkit.losses import build_loss  # noqa: E402
from reidkit.models import build_model  # noqa: E402
from reidkit.utils import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(backbone="efficientnet_lite0", pretrained=False, pooling="gem", last_stride=1, num_classes=617,
              input_size=(192, 96))


def measure(name: str, steps: int = 4) -> dict:
    model = build_model(name, **COMMON, **({"parts": 6} if name == "plnet" else {}))
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(64, 3, 192, 96).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(16).repeat_interleave(4)
    if name == "plnet":
        with torch.no_grad():
            model.fit_parts(model.eval().backbone(x[:32]))
    ce, tri = build_loss("ce", num_classes=617), build_loss("triplet_batch_hard", margin=0.3)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(x)
        loss = ce(out["logits"], labels) + tri(out["features"], labels)
        if name == "plnet":
            pl = out["part_logits"]
            loss = loss + ce(pl.reshape(-1, pl.shape[2]), labels.repeat_interleave(pl.shape[1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        dim = model(x).shape[1]
        for _ in range(3):
            model(x)
        infer = 4 * 64 / (time.perf_counter() - start)
    train = 64 / (sorted(times[1:])[len(times[1:]) // 2])  # median step, the first (warm-up) left out
    return {"train_images_per_second": round(train, 1), "inference_images_per_second": round(infer, 1),
            "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "descriptor_dim": dim}


def main() -> None:
    torch.set_num_threads(2)
    before = [round(v, 2) for v in os.getloadavg()]
    result = {name: measure(name) for name in ("embedding", "plnet")}
    result.update(load_before=before, load_after=[round(v, 2) for v in os.getloadavg()],
                  note="random pixels, 192x96, batch 64, 2 threads, median of 4 steps after one warm-up step")
    atomic_write_json(result, ROOT / "docs/benchmarks/plnet_speed.json")
    print(result)


if __name__ == "__main__":
    main()
