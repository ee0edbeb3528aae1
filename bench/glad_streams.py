"""Which GLAD streams carry the validation score? Evaluation only, no training.

GLAD's descriptor is its four streams (whole image, head, upper body, lower body), each L2-normalised, concatenated
and normalised again (`models.parts.fused_descriptor`), so the cosine distance of one stream alone is the cosine
distance of its slice of the descriptor. This embeds the CUHK03-NP validation carve (150 ids, seed 0; the
trainer's) once through reidkit's Extractor (pose boxes from BlazePose, flip TTA) and ranks the gallery with each
stream alone, the whole image + each part, and all four (which must give the training log's best mAP).

    .venv/bin/python bench/glad_streams.py runs/glad_cuhk03np/best.pt
-> the "glad_streams" entry of docs/benchmarks/parts_cuhk03np.json (bench/parts_table.py prints it under the table)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from reidkit.data.market import scan_image_folder
from reidkit.data.records import split_arrays
from reidkit.data.split import carve_validation_records
from reidkit.inference import Extractor
from reidkit.metrics import compute_distance_matrix, evaluate_rank_full
from reidkit.models.glad import STREAMS
from reidkit.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
CUHK = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected" / "bounding_box_train"
OUT = ROOT / "docs" / "benchmarks" / "parts_cuhk03np.json"


def stream_scores(query: np.ndarray, gallery: np.ndarray, ids: tuple, combos: dict[str, list[int]]) -> dict:
    q_pids, g_pids, q_cams, g_cams = ids
    width = query.shape[1] // len(STREAMS)
    out = {}
    for name, streams in combos.items():
        cols = np.concatenate([np.arange(s * width, (s + 1) * width) for s in streams])
        dist = compute_distance_matrix(query[:, cols], gallery[:, cols], metric="cosine")
        r = evaluate_rank_full(dist, q_pids, g_pids, q_cams, g_cams)
        out[name] = {"rank1": round(100 * float(r.cmc[0]), 1), "mAP": round(100 * r.mAP, 1),
                     "mINP": round(100 * r.mINP, 1)}
        print(name, out[name], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=CUHK)
    args = parser.parse_args()
    carved = carve_validation_records(scan_image_folder(args.data).records, 150, seed=0)
    (qp, qi, qc), (gp, gi, gc) = split_arrays(carved.query), split_arrays(carved.gallery)
    started = time.perf_counter()
    ext = Extractor(args.checkpoint, flip=True)
    query, gallery = ext.embed(list(qp), show_progress=True), ext.embed(list(gp), show_progress=True)
    combos = {name: [i] for i, name in enumerate(STREAMS)}
    combos.update({f"global + {name}": [0, i] for i, name in enumerate(STREAMS) if i})
    combos["all four (GLAD's descriptor)"] = list(range(len(STREAMS)))
    result = {"checkpoint": str(args.checkpoint), "scores": stream_scores(query, gallery, (qi, gi, qc, gc), combos),
              "seconds": round(time.perf_counter() - started, 1), "load_avg_1min": round(os.getloadavg()[0], 2),
              "pose_found": f"{ext.model.box_fn.found} of {ext.model.box_fn.seen}"}
    data = json.loads(OUT.read_text())
    data["glad_streams"] = result
    atomic_write_json(data, OUT)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
