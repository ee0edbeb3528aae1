"""Timings of dataset loading, image verification, validation carving and CUHK03 extraction.

Run: .venv/bin/python bench/bench_data.py  -> docs/benchmarks/data.json and docs/benchmarks/data.md
Uses ../shared/datasets/cuhk03np-detected/bounding_box_train when present (skipped otherwise) and a synthetic
CUHK03-shaped .mat built here.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from reidkit.data import carve_validation, carve_validation_records, load_image_folder, load_manifest, verify_images
from reidkit.data.cuhk03 import extract_cuhk03_images

REPO = Path(__file__).resolve().parents[1]
SHARED_TRAIN = REPO.parent / "shared" / "datasets" / "cuhk03np-detected" / "bounding_box_train"
OUT = REPO / "docs" / "benchmarks"


def _best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _synthetic_cuhk03_mat(path: Path, persons_per_pair: int = 40, height: int = 160, width: int = 60) -> int:
    """Two camera pairs of persons x 10 random images, stored the way MATLAB v7.3 stores cells."""
    rng = np.random.default_rng(0)
    counter = itertools.count()
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        pair_refs = []
        for _ in range(2):
            cells = np.empty((10, persons_per_pair), dtype=h5py.ref_dtype)
            for person, col in itertools.product(range(persons_per_pair), range(10)):
                img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                cells[col, person] = refs.create_dataset(f"i{next(counter)}", data=img.T).ref
            pair_refs.append(refs.create_dataset(f"p{len(pair_refs)}", data=cells, dtype=h5py.ref_dtype).ref)
        f.create_dataset("detected", data=np.array([pair_refs], dtype=h5py.ref_dtype), dtype=h5py.ref_dtype)
    return 2 * persons_per_pair * 10


def bench_shared(tmp: Path) -> list[dict]:
    if not SHARED_TRAIN.is_dir():
        return []
    records = load_image_folder(SHARED_TRAIN).train
    n = len(records)
    rows = [
        {"task": "load_image_folder (CUHK03-NP train, names only)", "items": n,
         "seconds": _best_of(lambda: load_image_folder(SHARED_TRAIN))},
        {"task": "verify_images (decode every JPEG, 64x128)", "items": n,
         "seconds": _best_of(lambda: verify_images(records), repeats=1)},
        {"task": "carve_validation_records (150 val ids)", "items": n,
         "seconds": _best_of(lambda: carve_validation_records(records, 150, seed=0))},
        {"task": "carve_validation fmt=manifest", "items": n,
         "seconds": _best_of(lambda: carve_validation(SHARED_TRAIN, tmp / "val.csv", 150, fmt="manifest"))},
        {"task": "load_manifest (checks every file exists)", "items": n,
         "seconds": _best_of(lambda: load_manifest(tmp / "val.csv"))},
    ]
    start = time.perf_counter()
    carve_validation(SHARED_TRAIN, tmp / "market", 150, fmt="market")
    rows.append({"task": "carve_validation fmt=market (copies files)", "items": n,
                 "seconds": time.perf_counter() - start})
    return rows


def bench_cuhk03(tmp: Path) -> list[dict]:
    mat = tmp / "cuhk-03.mat"
    n = _synthetic_cuhk03_mat(mat)
    start = time.perf_counter()
    extract_cuhk03_images(mat, tmp / "png")
    first = time.perf_counter() - start
    cached = _best_of(lambda: extract_cuhk03_images(mat, tmp / "png"))
    return [{"task": "extract_cuhk03_images (synthetic 160x60, write PNG)", "items": n, "seconds": first},
            {"task": "extract_cuhk03_images (all cached, skip)", "items": n, "seconds": cached}]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_shared(Path(tmp)) + bench_cuhk03(Path(tmp))
    for row in rows:
        row["items_per_second"] = round(row["items"] / row["seconds"], 1)
        row["seconds"] = round(row["seconds"], 4)
    load = os.getloadavg()
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "load_average_1_5_15": [round(x, 2) for x in load],
               "note": "2 CPU cores shared with other engineers' jobs; timings are noisy (best of 3 where cheap)"}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "data.json").write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    lines = ["# reidkit.data benchmarks", "",
             f"Machine: {machine['cpus']} CPU cores, Python {machine['python']}, load average "
             f"{machine['load_average_1_5_15']} at the end of the run (other engineers' jobs were running: "
             "timings are noisy).", "",
             "| task | items | seconds | items/s |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['task']} | {r['items']} | {r['seconds']:.3f} | {r['items_per_second']:.0f} |" for r in rows]
    (OUT / "data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
