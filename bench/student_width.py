"""Issue 25: which OSNet-AIN width and input size infers >= 3x faster than the 256x128 x1.0 teacher?

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/student_width.py [--out docs/benchmarks/student_width.json]

Bare backbones (untrained: speed does not depend on the weights), 128 random images per point, torch with 2 threads,
channels-last input, batch sizes 8 / 16 / 32 (the best one counts, as the CPU chunking of inference/features.py
would pick), every (width, input) alternated over 2 rounds. Widths: x1.0 (64/256/384/512 channels, the teacher),
x0.75 (48/192/320/384: a slimmed teacher; 288 would not divide into the GroupNorm gate's 16 groups) and x0.5
(32/128/192/256, the 0267 student).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from reidkit.models.backbones.osnet import OSNetAIN  # noqa: E402
from reidkit.utils import atomic_write_json  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "student_width.json"
WIDTHS = {"x1_0": (64, 256, 384, 512), "x0_75": (48, 192, 320, 384), "x0_5": (32, 128, 192, 256)}
CASES = [("x1_0", (256, 128)), ("x0_75", (256, 128)), ("x0_75", (192, 96)), ("x0_75", (176, 88)),
         ("x0_5", (256, 128)), ("x0_5", (192, 96))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    nets = {name: OSNetAIN(channels).eval() for name, channels in WIDTHS.items()}
    best: dict[tuple[str, tuple[int, int]], tuple[float, int]] = {}
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        for _ in range(2):
            for name, size in CASES:
                x = torch.randn(128, 3, *size).contiguous(memory_format=torch.channels_last)
                for batch in (8, 16, 32):
                    start = time.perf_counter()
                    for chunk in x.split(batch):
                        nets[name](chunk)
                    point = (128 / (time.perf_counter() - start), batch)
                    best[name, size] = max(best.get((name, size), (0.0, 0)), point)
    base = best["x1_0", (256, 128)][0]
    rows = {f"{name} {h}x{w}": {"images_per_second": round(ips, 1), "batch": batch, "ratio": round(ips / base, 2)}
            for (name, (h, w)), (ips, batch) in best.items()}
    atomic_write_json({"rows": rows, "threads": 2, "load_avg_1min_before": round(load_before, 2),
                       "load_avg_1min_after": round(os.getloadavg()[0], 2), "torch": torch.__version__}, args.out)
    for key, row in rows.items():
        print(f"{key:16s} {row['images_per_second']:7.1f} img/s at batch {row['batch']:2d}  {row['ratio']:.2f}x")


if __name__ == "__main__":
    main()
