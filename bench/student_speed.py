"""Issue 25's student against its teacher: inference images/s side by side, and validation accuracy.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/student_speed.py [--teacher runs/best/best.pt]
        [--student runs/student/best.pt [runs/student256/best.pt ...]] [--rounds 3] [--out FILE]

The 1,450 validation images (the 150-identity carve's query + gallery, ../shared's CUHK03-NP training folder) are
decoded once per model at its own input size (the teacher 256x128, a student 192x96 or 256x128); then each model
embeds all of them, the teacher and every student in turn for `--rounds` rounds (so a change of load on the shared
box hits all), torch with 2 threads, batch 128 (the Extractor's default; on the CPU each model's forward passes are
cut to its own `cpu_images_per_forward` chunk, recorded as `images_per_forward`), no flip. Before session 19 the
batch was 64 and uncut, which slowed the 256x128 teacher about 2.5x more than the students (see
docs/benchmarks/cpu_batching.md): ratios in student.json, student256.json, student_online.json and student176.json
are inflated. A run whose OpenVINO export sits beside its checkpoint (runs/X/best.xml, `reidkit export --format
openvino`) is also timed on OpenVINO (f32, 2 threads, batch 32) in the same rounds (`openvino_speedup`).
Reported: the median images/s of each and each student's ratio to the teacher, the validation figures of each
run (its summary.json: flip TTA, as trained) and the load average. Students are named by their run folder
(runs/student256/best.pt -> "student256").
Writes docs/benchmarks/student.json (`--out` another file: the 256x128 student's run is student256.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from reidkit.data.images import load_image_tensor  # noqa: E402
from reidkit.data.market import scan_image_folder  # noqa: E402
from reidkit.data.split import carve_validation_records  # noqa: E402
from reidkit.inference.backends import build_extractor  # noqa: E402
from reidkit.inference.extractor import Extractor  # noqa: E402
from reidkit.inference.features import cpu_images_per_forward  # noqa: E402
from reidkit.utils import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CUHK = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected" / "bounding_box_train"
OUT = ROOT / "docs" / "benchmarks" / "student.json"


def validation_paths() -> list[str]:
    carved = carve_validation_records(scan_image_folder(CUHK).records, 150, seed=0)
    return [r.path for r in carved.query + carved.gallery]


def run_summary(checkpoint: Path) -> dict:
    summary = checkpoint.parent / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}


def images_per_forward(extractor: Extractor) -> int:
    chunk = cpu_images_per_forward(extractor.model, extractor.input_size, extractor.mean, extractor.std)
    return min(extractor.batch_size, chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=ROOT / "runs" / "best" / "best.pt")
    parser.add_argument("--student", type=Path, nargs="+", default=[ROOT / "runs" / "student" / "best.pt"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON report (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    paths = validation_paths()
    models = {}
    roles = [("teacher", args.teacher)] + [(checkpoint.parent.name, checkpoint) for checkpoint in args.student]
    if len({role for role, _ in roles}) != len(roles):
        parser.error(f"--student: each checkpoint needs its own run folder name, got {[str(p) for p in args.student]}")
    for role, checkpoint in roles:
        extractor = Extractor(checkpoint, device="cpu", batch_size=args.batch_size)
        pixels = load_image_tensor(paths, extractor.input_size, extractor.resize)
        params = sum(p.numel() for p in extractor.model.parameters())
        models[role] = (checkpoint, extractor, pixels, params)
    openvino = {role: build_extractor(checkpoint.with_suffix(".xml"), batch_size=32, threads=2)
                for role, checkpoint in roles if checkpoint.with_suffix(".xml").is_file()}
    load_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {role: [] for role in models}
    openvino_seconds: dict[str, list[float]] = {role: [] for role in openvino}
    for _ in range(args.rounds):
        for role, (_, extractor, pixels, _) in models.items():
            for runner, timings in ((extractor, seconds), (openvino.get(role), openvino_seconds)):
                if runner is not None:
                    start = time.perf_counter()
                    runner.embed_uint8(pixels)
                    timings[role].append(time.perf_counter() - start)
    result = {"images": len(paths), "rounds": args.rounds, "batch_size": args.batch_size, "threads": 2,
              "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
              "torch": torch.__version__, "models": {}}
    for role, (checkpoint, extractor, _, params) in models.items():
        summary = run_summary(checkpoint)
        result["models"][role] = {
            "checkpoint": str(checkpoint.relative_to(ROOT)) if checkpoint.is_relative_to(ROOT) else str(checkpoint),
            "backbone": extractor.config.get("model", {}).get("backbone"),
            "input": list(extractor.input_size), "params_M": round(params / 1e6, 2),
            "images_per_forward": images_per_forward(extractor),
            "seconds": [round(s, 2) for s in seconds[role]],
            "images_per_second": round(len(paths) / statistics.median(seconds[role]), 1),
            "val": summary.get("best")}
        if role in openvino:
            result["models"][role]["openvino_images_per_second"] = round(
                len(paths) / statistics.median(openvino_seconds[role]), 1)
    teacher = result["models"]["teacher"]
    students = [role for role in result["models"] if role != "teacher"]
    result["speedup"] = {role: round(result["models"][role]["images_per_second"] / teacher["images_per_second"], 2)
                         for role in students}
    if "teacher" in openvino:
        result["openvino_speedup"] = {
            role: round(result["models"][role]["openvino_images_per_second"] / teacher["openvino_images_per_second"],
                        2) for role in students if role in openvino}
    atomic_write_json(result, args.out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
