"""Synthetic dataset generator: rendering speed, naive-baseline rank-1 and (optionally) a quickly trained CNN.

Run: .venv/bin/python bench/bench_synth.py [--seeds 3] [--train-seconds 600]
  -> docs/benchmarks/synth.json and docs/benchmarks/synth.md

Rank-1 follows the Market protocol (gallery images with the query's pid and camera are ignored). The trained
model is a small 4-stage CNN with a softmax head, trained from scratch on the synthetic training identities;
it only shows that the identity signal is learnable, the real models and the demo live elsewhere.
Without --train-seconds the previous training result in synth.json (if any) is kept in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reidkit.data.synth import SynthBatch, SynthConfig, generate_arrays, generate_market_dataset, render_identity_images

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks"
HARD = SynthConfig(num_train_ids=1, num_test_ids=50, num_cameras=2, images_per_camera=4)


def market_rank1(dist: np.ndarray, q: SynthBatch, g: SynthBatch) -> float:
    dist = np.where((q.pids[:, None] == g.pids[None, :]) & (q.camids[:, None] == g.camids[None, :]), np.inf, dist)
    return float(np.mean(g.pids[dist.argmin(1)] == q.pids))


def sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def pixels(images: np.ndarray) -> np.ndarray:
    n, h, w, c = images.shape
    return images.reshape(n, h // 4, 4, w // 4, 4, c).mean((2, 4)).reshape(n, -1) / 255.0


def colour_histogram(images: np.ndarray, bins: int = 8) -> np.ndarray:
    q = images.astype(np.int64) // (256 // bins)
    codes = ((q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]).reshape(len(images), -1)
    offsets = (np.arange(len(images)) * bins**3)[:, None]
    hist = np.bincount((codes + offsets).ravel(), minlength=len(images) * bins**3).reshape(len(images), -1)
    return np.sqrt(hist / hist.sum(1, keepdims=True))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - 0.45) / 0.25


def random_cnn(images: np.ndarray) -> np.ndarray:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        return F.normalize(net(F.avg_pool2d(to_tensor(images), 2)), dim=1).numpy()


def bench_speed(repeats: int = 2) -> dict:
    cfg = SynthConfig()
    pids = list(range(1, 51))
    render_identity_images([1], cfg)  # warm the per-camera scene cache
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        n = len(render_identity_images(pids, cfg).pids)
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_market_dataset(Path(tmp) / "synth", cfg, show_progress=False)
        disk = time.perf_counter() - start
        files = sum(1 for _ in (Path(tmp) / "synth").rglob("*.jpg"))
        start = time.perf_counter()
        generate_market_dataset(Path(tmp) / "synth", cfg, show_progress=False)
        cached = time.perf_counter() - start
    return {"size": f"{cfg.height}x{cfg.width}", "in_memory_images": n, "in_memory_wall_s": best_wall,
            "in_memory_cpu_s": best_cpu, "in_memory_img_per_s_wall": n / best_wall,
            "in_memory_img_per_s_cpu": n / best_cpu, "disk_images": files, "disk_wall_s": disk,
            "disk_img_per_s_wall": files / disk, "cached_rerun_s": cached}


def bench_baselines(seeds: int) -> list[dict]:
    rows = []
    for seed in range(seeds):
        split = generate_arrays(SynthConfig(**{**HARD.__dict__, "seed": seed}))
        q, g = split["query"], split["gallery"]
        row = {"seed": seed}
        for name, features in (("pixels", pixels), ("colour_histogram", colour_histogram), ("random_cnn", random_cnn)):
            row[name] = market_rank1(sq_dist(features(q.images), features(g.images)), q, g)
        hist = sq_dist(colour_histogram(q.images), colour_histogram(g.images))
        same_cam = np.where(q.camids[:, None] == g.camids[None, :], hist, np.inf)
        row["colour_histogram_within_camera"] = float(np.mean(g.pids[same_cam.argmin(1)] == q.pids))
        rows.append(row)
    return rows


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(nn.Conv2d(3, 32, 5, 2, 2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                      stage(32, 64), stage(64, 128), stage(128, 256))
        self.neck = nn.BatchNorm1d(256)
        self.classifier = nn.Linear(256, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.features(x).mean((2, 3))
        return embedding, self.classifier(self.neck(embedding))


def bench_training(seconds: float, seed: int = 0) -> dict:
    """Softmax training from scratch on the default synthetic config for a wall-clock budget."""
    cfg = SynthConfig(seed=seed)
    split = generate_arrays(cfg)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_x, train_y = to_tensor(split["train"].images), torch.from_numpy(split["train"].pids - 1)
    net = SmallCNN(cfg.num_train_ids)
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=5e-4)

    def evaluate() -> float:
        net.eval()
        with torch.no_grad():
            fq = F.normalize(net(to_tensor(split["query"].images))[0], dim=1).numpy()
            fg = F.normalize(net(to_tensor(split["gallery"].images))[0], dim=1).numpy()
        net.train()
        return market_rank1(sq_dist(fq, fg), split["query"], split["gallery"])

    untrained, history, epochs, start = evaluate(), [], 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in torch.randperm(len(train_y)).split(64):
            x = train_x[batch]
            flip = torch.rand(len(batch)) < 0.5
            x[flip] = x[flip].flip(3)
            x = torch.roll(x, (int(rng.integers(-8, 9)), int(rng.integers(-4, 5))), (2, 3))
            loss = F.cross_entropy(net(x)[1], train_y[batch], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs += 1
        history.append({"epoch": epochs, "seconds": round(time.perf_counter() - start, 1), "rank1": evaluate()})
    return {"seed": seed, "budget_s": seconds, "epochs": epochs, "untrained_rank1": untrained,
            "trained_rank1": history[-1]["rank1"] if history else untrained, "history": history,
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def write_report(result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "synth.json").write_text(json.dumps(result, indent=2) + "\n")
    speed, lines = result["speed"], ["# reidkit.data.synth benchmarks", ""]
    lines += [f"Machine: {result['machine']}", "", "## Rendering speed", "",
              "| task | images | seconds | images/s |", "| --- | ---: | ---: | ---: |",
              f"| render in memory {speed['size']} (wall) | {speed['in_memory_images']} | "
              f"{speed['in_memory_wall_s']:.2f} | {speed['in_memory_img_per_s_wall']:.0f} |",
              f"| render in memory {speed['size']} (process CPU time) | {speed['in_memory_images']} | "
              f"{speed['in_memory_cpu_s']:.2f} | {speed['in_memory_img_per_s_cpu']:.0f} |",
              f"| generate_market_dataset, default config, to disk | {speed['disk_images']} | "
              f"{speed['disk_wall_s']:.2f} | {speed['disk_img_per_s_wall']:.0f} |",
              f"| generate_market_dataset again (complete, skipped) | - | {speed['cached_rerun_s']:.4f} | - |", "",
              "## Naive baselines, Market-protocol rank-1 (50 test ids, 2 cameras, 4 images per camera)", "",
              "Chance is about 1/50. Within-camera: nearest gallery image from the query's own camera (not the "
              "protocol; shows the identity signal is there once the camera's look is held fixed).", "",
              "| seed | raw pixels 32x16 | colour histogram | random CNN | colour histogram within camera |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['seed']} | {r['pixels']:.2f} | {r['colour_histogram']:.2f} | {r['random_cnn']:.2f} | "
              f"{r['colour_histogram_within_camera']:.2f} |" for r in result["baselines"]]
    training = result.get("training")
    if training:
        lines += ["", "## Small CNN trained from scratch (softmax, default config: 100 train ids, 2 cameras)", "",
                  f"Seed {training['seed']}, budget {training['budget_s']:.0f} s wall, {training['epochs']} epochs, "
                  f"load average afterwards {[round(x, 2) for x in training['load_average_after']]} "
                  "(2 cores shared with other jobs).", "",
                  "| epoch | seconds | rank-1 |", "| ---: | ---: | ---: |",
                  f"| 0 (untrained) | 0 | {training['untrained_rank1']:.2f} |"]
        lines += [f"| {h['epoch']} | {h['seconds']:.0f} | {h['rank1']:.2f} |" for h in training["history"]]
    (OUT / "synth.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds for the naive baselines")
    parser.add_argument("--train-seconds", type=float, default=0.0, help="train the small CNN this long (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    result = {"speed": bench_speed(), "baselines": bench_baselines(args.seeds)}
    if args.train_seconds > 0:
        result["training"] = bench_training(args.train_seconds)
    elif (OUT / "synth.json").is_file():
        result["training"] = json.loads((OUT / "synth.json").read_text()).get("training")
    result["machine"] = (f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}; "
                         f"load average {[round(x, 2) for x in os.getloadavg()]} at the end of the run "
                         "(other engineers' jobs share the machine: timings are noisy).")
    write_report(result)
    print((OUT / "synth.md").read_text())


if __name__ == "__main__":
    main()
