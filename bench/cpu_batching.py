"""CPU embedding throughput with and without the activation-sized chunking of forward passes
(inference/features.py `cpu_images_per_forward`): images/s of `embed_tensor` at batch 128 and 64 cut to each
model's chunk (what every Extractor, validation and the video pipeline now do) against the same batches uncut (what
they did before), plus uncut batches of 8 and 32 for reference.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/cpu_batching.py [--images 128] [--rounds 2]

Embedding models built untrained (speed does not depend on the weights), each at its usual input; `--images` random
uint8 images, torch with 2 threads, no flip; configurations alternated within each round so a change of load on
the shared box hits all; the median of the rounds. Writes docs/benchmarks/cpu_batching.json and the table in
docs/benchmarks/cpu_batching.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from reidkit.inference import features  # noqa: E402
from reidkit.models import build_model  # noqa: E402
from reidkit.utils import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
MODELS = [("osnet_ain_x1_0", (256, 128)), ("osnet_ain_x0_5", (192, 96)), ("osnet_x0_25", (256, 128)),
          ("resnet50", (256, 128)), ("efficientnet_lite0", (192, 96))]
CONFIGS = [("128 cut", 128, True), ("64 cut", 64, True), ("128", 128, False), ("64", 64, False), ("32", 32, False),
           ("8", 8, False)]


def images_per_second(model: torch.nn.Module, images: torch.Tensor, batch_size: int, cut: bool) -> float:
    budget = features.CPU_ACTIVATION_BYTES
    features.CPU_ACTIVATION_BYTES = budget if cut else 1 << 62
    features._PEAK_BYTES_PER_IMAGE.pop(model, None)  # measured afresh under the budget in force
    try:
        start = time.perf_counter()
        features.embed_tensor(model, images, mean=model.input_mean, std=model.input_std,
                              device=torch.device("cpu"), batch_size=batch_size)
        return len(images) / (time.perf_counter() - start)
    finally:
        features.CPU_ACTIVATION_BYTES = budget


def write_table(result: dict) -> None:
    head = "| model | input | chunk | " + " | ".join(f"batch {name}" for name, _, _ in CONFIGS) + " | speed-up at 128 |"
    rows = [head, "|---|---|---:|" + "---:|" * len(CONFIGS) + "---:|"]
    for name, row in result["models"].items():
        ips = row["images_per_second"]
        rows.append(f"| {name} | {row['input']} | {row['chunk']} | "
                    + " | ".join(f"{ips[c]:.1f}" for c, _, _ in CONFIGS) + f" | {ips['128 cut'] / ips['128']:.2f}x |")
    text = (f"<!-- written by bench/cpu_batching.py: {result['images']} images, {result['rounds']} rounds, "
            f"2 threads, load {result['load_avg_1min_before']} -> {result['load_avg_1min_after']} -->\n"
            + "\n".join(rows) + "\n")
    md = OUT / "cpu_batching.md"
    doc = md.read_text() if md.is_file() else ""
    start, end = "<!-- table -->\n", "<!-- /table -->"
    if start in doc and end in doc:
        doc = doc[:doc.index(start) + len(start)] + text + doc[doc.index(end):]
        atomic_write_text(doc, md)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    models = {name: (build_model("embedding", backbone=name, pretrained=False, pooling="avg").eval(), size)
              for name, size in MODELS}
    pixels = {size: torch.randint(0, 256, (args.images, 3, *size), dtype=torch.uint8) for _, size in MODELS}
    load_before = os.getloadavg()[0]
    timings: dict[str, dict[str, list[float]]] = {name: {c: [] for c, _, _ in CONFIGS} for name in models}
    for _ in range(args.rounds):
        for name, (model, size) in models.items():
            for config, batch_size, cut in CONFIGS:
                timings[name][config].append(images_per_second(model, pixels[size], batch_size, cut))
    result = {"images": args.images, "rounds": args.rounds, "threads": 2,
              "cpu_activation_bytes": features.CPU_ACTIVATION_BYTES,
              "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
              "torch": torch.__version__, "models": {}}
    for name, (model, size) in models.items():
        result["models"][name] = {"input": f"{size[0]}x{size[1]}", "chunk": features.cpu_images_per_forward(
                                      model, size, model.input_mean, model.input_std),
                                  "images_per_second": {c: round(statistics.median(t), 1)
                                                        for c, t in timings[name].items()}}
    atomic_write_json(result, OUT / "cpu_batching.json")
    write_table(result)


if __name__ == "__main__":
    main()
