"""Where a pair network's training step spends its time (CPU): seconds per step and the top operators.

    .venv/bin/python bench/bench_pair_train_step.py [--models idla idla_ncc] [--threads 1]

One step = the trainer's: trunk on a batch of 76 images, the pair layers on 400 pairs of them, cross-entropy,
backward, Adam. Synthetic inputs (the time does not depend on the pixel values). Writes
docs/benchmarks/pair_train_step.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from reidkit.models import build_model
from reidkit.training.pair import retain_freed_memory
from reidkit.utils import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "pair_train_step"
IMAGES, PAIRS, TOP = 76, 400, 6


def profile_model(name: str, steps: int) -> dict:
    """`name` is a registered pair model, or "<name>:pytorch" for its pure-PyTorch path (no native kernels)."""
    name, _, path = name.partition(":")
    model = build_model(name, batchnorm=True, dropout=0.3).train()
    for module in model.modules():
        if hasattr(module, "native") and path == "pytorch":
            module.native = False
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(IMAGES, 3, *model.input_size, generator=gen)
    first, second = torch.randint(0, IMAGES, (2, PAIRS), generator=gen)
    labels = torch.randint(0, 2, (PAIRS,), generator=gen)

    def step() -> None:
        feats = model.embed(x)
        loss = F.cross_entropy(model.pair_logits(feats[first], feats[second]), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocations, native kernel build
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    top = [{"op": e.key, "share": e.self_cpu_time_total / total} for e in events[:TOP]]
    label = name + (" (PyTorch path)" if path == "pytorch" else "")
    return {"model": label, "seconds_per_step": seconds, "pairs_per_second": PAIRS / seconds, "top_ops": top}


def markdown(report: dict) -> str:
    lines = ["# Pair networks: one training step on CPU", "",
             f"`bench/bench_pair_train_step.py`: {IMAGES} images through the trunk, {PAIRS} pairs through the pair "
             f"layers, CE, backward, Adam; BatchNorm on, dropout 0.3; {report['threads']} thread(s); load average "
             f"before {report['load_before']:.1f}.", "",
             "| model | s / step | training pairs/s | top operators (share of self CPU time) |", "|---|---:|---:|---|"]
    for r in report["models"]:
        ops = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in r["top_ops"])
        lines.append(f"| {r['model']} | {r['seconds_per_step']:.2f} | {r['pairs_per_second']:.0f} | {ops} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["idla", "idla:pytorch", "idla_ncc", "idla_ncc:pytorch"],
                        help="pair models; NAME:pytorch = the model without its native C kernels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as the trainer does
    report = {"threads": args.threads, "load_before": os.getloadavg()[0],
              "models": [profile_model(name, args.steps) for name in args.models]}
    atomic_write_json(report, OUT.with_suffix(".json"))
    atomic_write_text(markdown(report), OUT.with_suffix(".md"))
    print(markdown(report))


if __name__ == "__main__":
    main()
