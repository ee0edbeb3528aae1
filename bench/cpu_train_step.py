"""Does glibc's mmap of large blocks also cost the CPU training step? Step time of OSNet-AIN x1.0 at 256x128,
batch 64 (forward + backward + Adam), in fresh child processes with glibc's defaults and with large blocks kept on
the heap (`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824`), alternated over `--rounds`; peak resident memory
(ru_maxrss) beside it. Inference already avoids the cost by cutting its batches (docs/benchmarks/cpu_batching.md);
a training batch cannot be cut without changing BatchNorm, so this measures what an allocator setting would buy.

    .venv/bin/python bench/cpu_train_step.py [--steps 4] [--rounds 2]

Writes docs/benchmarks/cpu_train_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "cpu_train_step.json"
VARIANTS = {"glibc defaults": {}, "large blocks on the heap": {"MALLOC_MMAP_MAX_": "0",
                                                                 "MALLOC_TRIM_THRESHOLD_": "1073741824"}}
CHILD = """
import json, resource, sys, time
import torch
from reidkit.models import build_model
torch.set_num_threads(2)
torch.manual_seed(0)
model = build_model("embedding", backbone="osnet_ain_x1_0", pretrained=False, pooling="avg", bnneck=True,
                    num_classes=100).train().to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
x = torch.randn(64, 3, 256, 128).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 100, (64,))
times = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x)["logits"], labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": times, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, env in VARIANTS.items():
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.steps)], capture_output=True, text=True,
                                 check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **env}).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    result = {"steps": args.steps, "rounds": args.rounds, "batch": 64, "input": "256x128", "threads": 2,
              "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
              "variants": {}}
    for name, rows in runs.items():
        warm = [s for row in rows for s in row["seconds"][1:]]  # the first step of each process warms up
        result["variants"][name] = {"median_step_seconds": round(statistics.median(warm), 2),
                                    "max_rss_mb": round(max(row["max_rss_mb"] for row in rows)),
                                    "seconds": [[round(s, 2) for s in row["seconds"]] for row in rows]}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
