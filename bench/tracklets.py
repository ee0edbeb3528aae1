"""Tracklet vs image re-ID of the same models on the CUHK03-NP validation carve (docs/tracklets.md).

    reidkit split --data ../shared/datasets/cuhk03np-detected/bounding_box_train --out runs/h4/cuhk03-val --val-ids 150
    python bench/tracklets.py --data runs/h4/cuhk03-val --model recipe=runs/recipe60/best.pt \
        --model clip=runs/h4/clip_ft/best.pt --out docs/benchmarks/tracklets

Every validation image is embedded once per model (flip TTA, as the training validation does); from those frame
embeddings:
- image / split:  the carve's query/ images against bounding_box_test/ (the image validation of training);
- image / all:    every validation image against all others (same pid + camera removed);
- tracklet / pooled: all validation images grouped by (pid, camera) (one tracklet per identity and camera, up to
  ~5 frames), every tracklet against all others (same pid + camera removed: each query's one true match is its
  identity's tracklet in the other camera), with avg / consensus / attention pooling and the min-pair distance;
- tracklet / split: the carve's one-image query/ against bounding_box_test/ grouped by (pid, camera).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from reidkit.data.records import split_arrays  # noqa: E402
from reidkit.data.tracklets import load_market_tracklets  # noqa: E402
from reidkit.distance import compute_distance_matrix  # noqa: E402
from reidkit.metrics import evaluate_rank_full, summarize  # noqa: E402
from reidkit.training.tasks.tracklet import frame_embedder, gather_features, tracklet_distances  # noqa: E402
from reidkit.utils import atomic_write_json, atomic_write_text  # noqa: E402


def figures(distmat: np.ndarray, q_pids, g_pids, q_cams, g_cams) -> dict:
    r = evaluate_rank_full(distmat, q_pids, g_pids, q_cams, g_cams)
    out = summarize(r.cmc, r.mAP, r.mINP, num_valid_queries=r.num_valid_queries)
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in out.items()}


def measure(model_path: str, data: Path, flip: bool) -> dict:
    pooled = load_market_tracklets(data, "pooled")
    split = load_market_tracklets(data, "split")
    paths = list(dict.fromkeys(p for t in pooled.gallery for p in t.paths))
    embedder = frame_embedder(model_path, device="cpu", flip=flip)
    start = time.perf_counter()
    features = embedder.embed(paths, show_progress=False)
    seconds = time.perf_counter() - start
    scores = embedder.scores(features)
    row = {p: i for i, p in enumerate(paths)}
    results: dict[str, dict] = {}
    # image level
    from reidkit.data import load_market

    images = load_market(data)
    q_paths, q_pids, q_cams = split_arrays(images.query)
    g_paths, g_pids, g_cams = split_arrays(images.gallery)
    qf, gf = features[[row[p] for p in q_paths]].numpy(), features[[row[p] for p in g_paths]].numpy()
    results["image/split"] = figures(compute_distance_matrix(qf, gf, "cosine"), q_pids, g_pids, q_cams, g_cams)
    a_pids, a_cams = np.concatenate([q_pids, g_pids]), np.concatenate([q_cams, g_cams])
    af = np.concatenate([qf, gf])
    results["image/all"] = figures(compute_distance_matrix(af, af, "cosine"), a_pids, a_pids, a_cams, a_cams)
    # tracklet level
    tq = gather_features(pooled.query, features, row, scores)
    tg = tq if pooled.gallery is pooled.query else gather_features(pooled.gallery, features, row, scores)
    poolings = ["avg", "consensus"] + (["attention"] if embedder.has_attention else [])
    for pooling in poolings:
        results[f"tracklet/pooled/{pooling}"] = figures(tracklet_distances(tq, tg, pooling), tq.pids, tg.pids,
                                                        tq.camids, tg.camids)
    results["tracklet/pooled/min-pair"] = figures(tracklet_distances(tq, tg, "avg", "min"), tq.pids, tg.pids,
                                                  tq.camids, tg.camids)
    sq, sg = gather_features(split.query, features, row, scores), gather_features(split.gallery, features, row, scores)
    results["tracklet/split/avg"] = figures(tracklet_distances(sq, sg, "avg"), sq.pids, sg.pids, sq.camids, sg.camids)
    frames = np.diff(tq.offsets)
    return {"model": model_path, "flip": flip, "embed_seconds": round(seconds, 1), "num_frames": len(paths),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "pooled_tracklets": len(pooled.gallery), "frames_per_tracklet": [int(frames.min()), round(
                float(frames.mean()), 2), int(frames.max())], "results": results}


def from_training_log(run: Path) -> dict:
    """The last validation row of a tracklet training run (same carve, protocols and flip TTA as `measure`):
    val_image -> image/split, val_avg -> tracklet/pooled/avg, val -> tracklet/pooled/<the model's pooling>."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    row = next(r for r in reversed(rows) if "val" in r)
    config = json.loads((run / "config.json").read_text())
    pooling = config["model"]["temporal_pooling"]
    results = {"image/split": row["val_image"], f"tracklet/pooled/{pooling}": row["val"]}
    if "val_avg" in row:
        results["tracklet/pooled/avg"] = row["val_avg"]
    results = {k: {m: round(v, 2) if isinstance(v, float) else v for m, v in r.items()} | {"num_valid_queries": 300}
               for k, r in results.items()}
    return {"model": str(run / "best.pt"), "flip": bool(config.get("flip_tta")), "from_training_log": True,
            "epoch": row["epoch"], "train_minutes": round(sum(r["epoch_seconds"] for r in rows) / 60, 1),
            "overrides": {k: config[k] for k in ("init_from",) if k in config},
            "clip_len": config["data"]["clip_len"], "results": dict(sorted(results.items()))}


def markdown(report: dict) -> str:
    lines = ["# Tracklet vs image re-ID on the CUHK03-NP validation carve", "",
             f"Data: {report['data']} (150 validation identities, split seed 0; never seen in training). "
             f"Load average at the last start: {report['load_average']} (per model in the JSON). "
             "Generated by `bench/tracklets.py`; protocols in "
             "docs/tracklets.md.", "",
             "| model | evaluation | rank-1 | mAP | mINP | queries |", "|---|---|---|---|---|---|"]
    for name, entry in report["models"].items():
        for key, r in entry["results"].items():
            lines.append(f"| {name} | {key} | {r['rank1']:.1f} | {r['mAP']:.1f} | {r['mINP']:.1f} | "
                         f"{r['num_valid_queries']} |")
    lines += ["", "Gain of tracklet (pooled, avg) over image (split) mAP:", ""]
    for name, entry in report["models"].items():
        r = entry["results"]
        if "tracklet/pooled/avg" not in r:
            continue
        gain = r["tracklet/pooled/avg"]["mAP"] - r["image/split"]["mAP"]
        lines.append(f"- {name}: {r['image/split']['mAP']:.1f} -> {r['tracklet/pooled/avg']['mAP']:.1f} "
                     f"({gain:+.1f} points)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the validation carve (reidkit split --out)")
    p.add_argument("--model", action="append", default=[], help="NAME=CHECKPOINT (repeatable)")
    p.add_argument("--log", action="append", default=[],
                   help="NAME=RUN: take a tracklet training run's last validation (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="output stem: OUT.json and OUT.md")
    p.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    previous = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() \
        else {"models": {}}
    report = {"data": str(args.data), "load_average": [round(x, 2) for x in os.getloadavg()],
              "python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.machine(),
              "models": previous.get("models", {})}
    for item in args.model:
        name, _, path = item.partition("=")
        report["models"][name] = measure(path, args.data, not args.no_flip)
        print(name, json.dumps({k: (v["rank1"], v["mAP"]) for k, v in report["models"][name]["results"].items()}),
              flush=True)
    for item in args.log:
        name, _, run = item.partition("=")
        report["models"][name] = from_training_log(Path(run))
    atomic_write_json(report, args.out.with_suffix(".json"))
    atomic_write_text(markdown(report), args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
