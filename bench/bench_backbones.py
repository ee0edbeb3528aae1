"""CPU forward throughput of every backbone (images/s, eval mode, no grad).

    .venv/bin/python bench/bench_backbones.py [--threads 2 1] [--batch 32] [--repeats 3]

Writes docs/benchmarks/backbones.json and docs/benchmarks/backbones.md. Each figure is the median of
`--repeats` timed batches after one warm-up batch, for each thread count in `--threads` (the first one is
the headline figure). The machine's load average is recorded beside them, since other jobs on a shared
machine slow these numbers down, multi-threaded runs most.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from reidkit.models.backbones import build_backbone
from reidkit.utils import atomic_write_json, atomic_write_text

BACKBONES = ["simple_cnn", "osnet_x0_25", "mobilenetv2", "efficientnet_lite0", "efficientnet_lite1",
             "efficientnet_lite2", "osnet_x1_0", "resnet50", "resnet50_ibn_a"]
SIZES = [(256, 128), (128, 64)]
OUT_DIR = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def images_per_second(model: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(batch)  # warm-up: allocator and kernel selection
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    return batch.shape[0] / statistics.median(times)


def column(threads: int, height: int, width: int) -> str:
    return f"img_s_{height}x{width}_{threads}thr"


def run(threads: list[int], batch_size: int, repeats: int) -> dict:
    load_before = os.getloadavg()[0]
    rows = []
    for name in BACKBONES:
        torch.manual_seed(0)
        model = build_backbone(name).eval()
        params = sum(p.numel() for p in model.parameters())
        row = {"backbone": name, "params_m": round(params / 1e6, 3), "out_channels": model.out_channels}
        for count in threads:
            torch.set_num_threads(count)
            for height, width in SIZES:
                batch = torch.randn(batch_size, 3, height, width)
                row[column(count, height, width)] = round(images_per_second(model, batch, repeats), 1)
        rows.append(row)
        print(row, flush=True)
    return {
        "benchmark": "backbone forward throughput (CPU, eval, no grad)",
        "threads": threads,
        "batch": batch_size,
        "repeats": repeats,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    columns = [(t, h, w) for t in result["threads"] for h, w in SIZES]
    lines = [
        "# Backbone CPU throughput",
        "",
        f"Forward pass, eval mode, no grad, batch {result['batch']}, torch.set_num_threads(n) for n in "
        f"{result['threads']}, torch {result['torch']}, {result['machine']}; median of {result['repeats']} "
        "batches after a warm-up.",
        f"Load average {result['load_average_before']} before / {result['load_average_after']} after: "
        "the machine was shared with other jobs, so treat the figures as lower bounds and compare them "
        "with each other rather than across runs.",
        "",
        "| backbone | params (M) | channels | " + " | ".join(f"img/s {h}x{w}, {t} thr" for t, h, w in columns)
        + " |",
        "|---|---:|---:|" + "---:|" * len(columns),
    ]
    for row in result["rows"]:
        values = " | ".join(f"{row[column(t, h, w)]:.1f}" for t, h, w in columns)
        lines.append(f"| {row['backbone']} | {row['params_m']:.2f} | {row['out_channels']} | {values} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = run(args.threads, args.batch, args.repeats)
    atomic_write_json(result, OUT_DIR / "backbones.json")
    atomic_write_text(markdown(result), OUT_DIR / "backbones.md")
    print(markdown(result))


if __name__ == "__main__":
    main()
