"""Clustering variants measured on dense (n x n) re-ranked distances of the CUHK03-NP validation halves, to decide
what `reidkit.analysis.cluster` should ship (docs/verify_cluster.md, "What was tried").

Run: .venv/bin/python bench/cluster_variants.py [emb|intel ...]   (~5 min per model on 2 busy cores; results cached
in bench/out/cluster_variants_<model>.pkl) -> the "variants" entry of docs/benchmarks/verify_cluster.{json,md}.

Grid (per half, A and B of bench/verify_cluster.py): camera centring on/off x same-camera squared-distance penalty
0 / 0.3 x k1 5, 8, 12, 20 x k2 1, 4 x lambda 0, 0.2, through `reidkit.rerank.re_ranking` on the full matrix; then
DBSCAN (min_samples 1, 2, 4; eps 0.2-0.95) and scipy average / complete linkage (threshold 0.2-0.98). Honest
reading: within a family, the setting with the best B-cubed F on one half is reported on the other half, both ways.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import verify_cluster as vc  # noqa: E402

CACHE = vc.REPO / "bench" / "out"
FEATURES = {"emb": "emb_val (ours, EfficientNet-Lite0)", "intel": "Intel OSNet-AIN 0277 (OpenVINO)"}
EPS = np.round(np.arange(0.20, 0.951, 0.025), 3)
THRESHOLDS = np.round(np.arange(0.20, 1.0, 0.02), 3)
GRID = list(itertools.product((True, False), (0.0, 0.3), (5, 8, 12, 20), (1, 4), (0.0, 0.2)))
FAMILIES = {
    "DBSCAN, every setting": lambda r: r["method"] == "dbscan",
    "DBSCAN, no same-camera penalty (the first version's family)": lambda r: r["method"] == "dbscan"
    and not r["inflate"] and r["cam"],
    "average linkage on Jaccard, every setting": lambda r: r["method"] == "average",
    "complete linkage on Jaccard, every setting": lambda r: r["method"] == "complete",
    "DBSCAN or average linkage": lambda r: r["method"] in ("dbscan", "average"),
    "everything": lambda r: True,
}


def reranked(x, cam, centred: bool, penalty: float, k1: int, k2: int, lam: float) -> np.ndarray:
    from reidkit.analysis.cluster import camera_centred
    from reidkit.rerank import re_ranking

    f = camera_centred(x, cam) if centred else x
    sq = np.clip(2 - 2 * f @ f.T, 0, None) + penalty * (cam[:, None] == cam[None, :])
    np.fill_diagonal(sq, 0)
    d = np.sqrt(sq)
    out = re_ranking(d, d, d, k1=k1, k2=k2, lambda_value=lam)
    out = np.maximum((out + out.T) / 2, 0)
    np.fill_diagonal(out, 0)
    return out


def scores(d: np.ndarray, y: np.ndarray) -> dict:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    from sklearn.cluster import DBSCAN

    from reidkit.metrics.clustering import bcubed_f

    out = {}
    for ms, eps in itertools.product((1, 2, 4), EPS):
        out[("dbscan", ms, float(eps))] = bcubed_f(y, DBSCAN(eps=float(eps), min_samples=ms,
                                                             metric="precomputed").fit(d).labels_)
    for method in ("average", "complete"):
        tree = linkage(squareform(d, checks=False), method=method)
        for t in THRESHOLDS:
            out[(method, 0, float(t))] = bcubed_f(y, fcluster(tree, t, criterion="distance"))
    return out


def measure(model: str, x, pids, camids, in_a) -> list[dict]:
    cache = CACHE / f"cluster_variants_{model}.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    rows = []
    for centred, penalty, k1, k2, lam in GRID:
        halves = {h: scores(reranked(x[m], camids[m], centred, penalty, k1, k2, lam), pids[m])
                  for h, m in (("A", in_a), ("B", ~in_a))}
        for key in halves["A"]:
            rows.append({"cam": centred, "inflate": penalty, "k1": k1, "k2": k2, "lam": lam, "method": key[0],
                         "ms": key[1], "t": key[2], "A": halves["A"][key], "B": halves["B"][key]})
    CACHE.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(rows))
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for family, keep in FAMILIES.items():
        chosen = [r for r in rows if keep(r)]
        entry = {"ceiling_A": max(r["A"] for r in chosen), "ceiling_B": max(r["B"] for r in chosen)}
        for choose, report in (("A", "B"), ("B", "A")):
            best = max(chosen, key=lambda r: r[choose])
            entry[f"chosen_on_{choose}_reported_on_{report}"] = {
                "bcubed_f": best[report], "bcubed_f_on_choice_half": best[choose],
                "setting": {k: best[k] for k in ("method", "cam", "inflate", "k1", "k2", "lam", "ms", "t")}}
        out[family] = entry
    return out


def main() -> None:
    torch.set_num_threads(1)
    paths, pids, camids, in_a = vc.load_val(vc.REPO / "runs" / "h3" / "cuhk03-val")
    report = json.loads((vc.OUT / "verify_cluster.json").read_text())
    report.setdefault("variants", {})
    for model in sys.argv[1:] or list(FEATURES):
        x = vc.cached_features(FEATURES[model], vc.MODELS[FEATURES[model]], paths)
        report["variants"][FEATURES[model]] = summary(measure(model, x, pids, camids, in_a))
        print(json.dumps(report["variants"][FEATURES[model]], indent=1, default=float)[:3000])
    (vc.OUT / "verify_cluster.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (vc.OUT / "verify_cluster.md").write_text(vc.markdown(report))


if __name__ == "__main__":
    main()
