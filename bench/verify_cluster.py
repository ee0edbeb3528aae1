"""Verification, calibration and clustering on the CUHK03-NP validation identities, plus clustering scale.

Run: .venv/bin/python bench/verify_cluster.py [--val runs/h3/cuhk03-val] [--skip-scale] [--skip-pair]
     [--clustering-only]   (re-measure the clustering tables only; verification, explain and scale kept)
  -> docs/benchmarks/verify_cluster.json, docs/benchmarks/verify_cluster.md, docs/images/explain_*.png

Protocol (docs/verify_cluster.md):
* Data: the seed-0 150-identity validation carve (`reidkit split --val-ids 150`), its query + gallery images (none
  of these identities was seen in training). The 150 identities are split in two halves of 75 (seeded
  permutation): A and B.
* Verification: calibration fitted on A's balanced pairs (every cross-camera same-person pair + one random
  different-person pair each), measured on B: ROC AUC and TAR at FAR 1e-2 / 1e-3 on every B positive against
  up to 100,000 random B negatives (20,000 for the pair network, whose pairs cost a network pass each), ECE
  (15 bins) on B's balanced pairs before (embeddings: (1 + cos) / 2; pair network: its softmax) and after.
* Clustering: all images of B as one unlabelled folder. Ours: parameters chosen on A (`choose_cluster_params`),
  applied to B. Baselines: scikit-learn DBSCAN (cosine) and average-linkage agglomerative clustering (cosine) on
  the same features with their threshold (and DBSCAN's min_samples) tuned on B itself: an optimistic baseline.
  The same with the halves swapped (choose on B, report on A) as a second reading.
* Scale: synthetic 1280-d features (identities of 10 crops in a 64-d subspace plus isotropic noise) at 10k and
  100k crops, each in a fresh process: wall time and peak resident memory (VmHWM); image decoding and
  embedding speed measured separately on real crops.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks"
IMAGES = REPO / "docs" / "images"
WORK = REPO / "runs" / "h3" / "bench"
MODELS = {
    "emb_val (ours, EfficientNet-Lite0)": REPO / "runs" / "emb_val" / "best.pt",
    "Intel OSNet-AIN 0277 (OpenVINO)": REPO.parent / "shared" / "models" / "openvino" /
    "person-reidentification-retail-0277" / "person-reidentification-retail-0277.xml",
}
PAIR_MODEL = ("IDLA (runs/idla_val)", REPO / "runs" / "idla_val" / "best.pt")


def load_val(val: Path):
    from reidkit.analysis.verify import labelled_records
    from reidkit.data.records import split_arrays

    paths, pids, camids = split_arrays(labelled_records(val))
    ids = np.unique(pids)
    half_a = np.random.default_rng(0).permutation(ids)[: ids.size // 2]
    in_a = np.isin(pids, half_a)
    return np.asarray(paths), pids, camids, in_a


def cached_features(name: str, model: Path, paths: np.ndarray) -> np.ndarray:
    from reidkit.analysis.verify import EmbeddingScorer

    cache = WORK / f"features_{model.stem}.npy"
    if cache.is_file():
        return np.load(cache)
    start = time.time()
    features = EmbeddingScorer(model, device="cpu", batch_size=32).features(list(paths), show_progress=True)
    print(f"{name}: embedded {len(paths)} images in {time.time() - start:.0f} s", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    np.save(cache, features)
    return features


# ------------------------------------------------------------------------------------------------ verification

def verification(scores_fit_a, labels_fit_a, scores_fit_b, labels_fit_b, scores_eval_b, labels_eval_b,
                 naive: str) -> dict:
    from reidkit.analysis.calibration import fit_calibrator
    from reidkit.metrics.calibration import expected_calibration_error, tar_at_far
    from reidkit.metrics.verification import roc_auc

    before = ((1 + scores_fit_b) / 2 if naive == "cosine" else 1 / (1 + np.exp(-scores_fit_b))).clip(0, 1)
    row = {"auc": roc_auc(scores_eval_b, labels_eval_b),
           "ece_before": expected_calibration_error(before, labels_fit_b), "ece_before_mapping":
           "(1 + cos) / 2" if naive == "cosine" else "softmax of the logits",
           "pairs_fit_a": int(len(labels_fit_a)), "pairs_balanced_b": int(len(labels_fit_b)),
           "b_same": int(labels_eval_b.sum()), "b_different": int((1 - labels_eval_b).sum())}
    for far in (1e-2, 1e-3):
        row[f"tar_at_far_{far:g}"], row[f"threshold_at_far_{far:g}"] = tar_at_far(scores_eval_b, labels_eval_b, far)
    for method in ("platt", "isotonic"):
        cal = fit_calibrator(scores_fit_a, labels_fit_a, method)
        row[f"ece_after_{method}"] = expected_calibration_error(cal.predict(scores_fit_b), labels_fit_b)
        if method == "platt":
            row["platt"] = cal.to_dict()
    return row


def half_pairs(pids, camids, mask, negatives: int, seed: int):
    from reidkit.analysis.calibration import validation_pairs

    index = np.flatnonzero(mask)
    fit, far_pairs = validation_pairs(pids[index], camids[index], seed=seed, num_negatives=negatives)
    return index, fit, far_pairs


def embedding_verification(features, pids, camids, in_a) -> tuple[dict, dict]:
    from reidkit.analysis.verify import cosine_pairs

    ia, fit_a, _ = half_pairs(pids, camids, in_a, 10, 0)
    ib, fit_b, eval_b = half_pairs(pids, camids, ~in_a, 100_000, 1)
    s_a = cosine_pairs(features[ia], fit_a.first, fit_a.second)
    s_b = cosine_pairs(features[ib], fit_b.first, fit_b.second)
    s_eval = cosine_pairs(features[ib], eval_b.first, eval_b.second)
    return (verification(s_a, fit_a.label, s_b, fit_b.label, s_eval, eval_b.label, "cosine"),
            {"scores": s_eval, "labels": eval_b.label, "first": ib[eval_b.first], "second": ib[eval_b.second]})


def pair_verification(model: Path, paths, pids, camids, in_a) -> dict:
    from reidkit.analysis.verify import PairScorer

    cache = WORK / "idla_scores.npz"
    ia, fit_a, _ = half_pairs(pids, camids, in_a, 10, 0)
    ib, fit_b, eval_b = half_pairs(pids, camids, ~in_a, 20_000, 1)
    if cache.is_file():
        saved = np.load(cache)
        s_a, s_b, s_eval = saved["a"], saved["b"], saved["eval"]
    else:
        scorer = PairScorer(model, device="cpu")
        start = time.time()
        s_a = scorer.score_pairs(list(paths[ia]), fit_a.first, fit_a.second, show_progress=True)
        both = scorer.score_pairs(list(paths[ib]), np.r_[fit_b.first, eval_b.first],
                                  np.r_[fit_b.second, eval_b.second], show_progress=True)
        s_b, s_eval = both[:len(fit_b)], both[len(fit_b):]
        print(f"IDLA: {len(s_a) + len(both)} pairs in {time.time() - start:.0f} s", flush=True)
        np.savez(cache, a=s_a, b=s_b, eval=s_eval)
    return verification(s_a, fit_a.label, s_b, fit_b.label, s_eval, eval_b.label, "log_odds")


# ------------------------------------------------------------------------------------------------ clustering

def tuned_baselines(features: np.ndarray, pids: np.ndarray) -> dict:
    """DBSCAN and average linkage on cosine distances, thresholds tuned on these very identities."""
    from sklearn.cluster import DBSCAN, AgglomerativeClustering

    from reidkit.analysis.cluster import bcubed_f, clustering_scores

    best: dict[str, tuple[float, dict, np.ndarray]] = {}
    for eps in np.arange(0.05, 0.80, 0.025):
        for min_samples in (1, 2, 3, 4):
            labels = DBSCAN(eps=float(eps), min_samples=min_samples, metric="cosine").fit(features).labels_
            f = bcubed_f(pids, labels)
            if f > best.get("dbscan_cosine", (-1,))[0]:
                best["dbscan_cosine"] = (f, {"eps": round(float(eps), 3), "min_samples": min_samples}, labels)
    for threshold in np.arange(0.05, 1.2, 0.025):
        labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                         distance_threshold=float(threshold)).fit(features).labels_
        f = bcubed_f(pids, labels)
        if f > best.get("average_linkage_cosine", (-1,))[0]:
            best["average_linkage_cosine"] = (f, {"distance_threshold": round(float(threshold), 3)}, labels)
    return {name: {**params, **clustering_scores(pids, labels)} for name, (_, params, labels) in best.items()}


def clustering(features, pids, camids, choose_mask) -> dict:
    from reidkit.analysis.cluster import choose_cluster_params, cluster_features, clustering_scores

    chosen, table = choose_cluster_params(features[choose_mask], pids[choose_mask], camids[choose_mask])
    report = ~choose_mask
    start = time.time()
    labels = cluster_features(features[report], chosen, camids[report])
    ours = {**vars(chosen), **clustering_scores(pids[report], labels), "seconds": time.time() - start,
            "bcubed_f_on_choice_half": table[0]["bcubed_f"]}
    # the same pipeline without any camera information (no centring, no penalty), at its best setting on the choice half
    plain = next(r for r in table if not r["camera_aware"] and not r["same_camera_penalty"])
    no_cam = type(chosen)(**{k: plain[k] for k in vars(chosen)})
    ours_no_cam = {**vars(no_cam), **clustering_scores(pids[report], cluster_features(features[report], no_cam))}
    baselines = tuned_baselines(features[report], pids[report])
    return {"ours_chosen_on_other_half": ours, "ours_without_camera_correction": ours_no_cam, **baselines,
            "images": int(report.sum()), "identities": int(np.unique(pids[report]).size)}


# ------------------------------------------------------------------------------------------------ explain

def shrink_png(path: Path) -> None:
    """256-colour palette: the docs pictures drop from ~550 KB to ~150 KB with no visible change."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def explain_pictures(model: Path, paths, pairs: dict) -> dict:
    from reidkit.analysis import explain

    s, y, first, second = pairs["scores"], pairs["labels"], pairs["first"], pairs["second"]
    threshold = float(np.quantile(s[y == 0], 0.99))  # FAR 1e-2 on these pairs
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    above = positives[s[positives] > threshold]
    picks = {"true_match": above[np.argsort(s[above])[len(above) // 2]],  # a typical accepted same-person pair
             "false_match": negatives[np.argmax(s[negatives])],  # the most similar different-person pair
             "false_non_match": positives[np.argmin(s[positives])]}  # the least similar same-person pair
    out = {}
    for name, k in picks.items():
        picture = IMAGES / f"explain_{name}.png"
        result = explain(paths[first[k]], paths[second[k]], model=model, out=picture)
        shrink_png(picture)
        out[name] = {"a": Path(paths[first[k]]).name, "b": Path(paths[second[k]]).name, "cosine": result.score,
                     "dimensions": result.dimensions, "contributions": result.contributions,
                     "picture": str(picture.relative_to(REPO)), "threshold_far_1e-2": threshold}
    return out


# ------------------------------------------------------------------------------------------------ scale

def synthetic(n: int, dim: int = 1280, per: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((64, dim), dtype=np.float32)
    labels = np.repeat(np.arange(n // per), per)
    centres = rng.standard_normal((n // per, 64), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 10000):
        rows = labels[s:s + 10000]
        x[s:s + 10000] = ((centres[rows] + 0.5 * rng.standard_normal((len(rows), 64), dtype=np.float32)) @ basis
                          + 2.0 * rng.standard_normal((len(rows), dim), dtype=np.float32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over fork + exec, so a child
    of a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_child(n: int, average: bool = False) -> None:
    """One size in a fresh process: prints a JSON line with time and peak memory."""
    torch.set_num_threads(2)
    from reidkit.analysis.cluster import EXACT_LIMIT, ClusterParams, cluster_features, clustering_scores

    x, labels = synthetic(n)
    generation_peak = peak_rss_mb()
    with contextlib.suppress(OSError):  # reset the peak to the current RSS (Linux >= 4.0): the clustering's own
        Path("/proc/self/clear_refs").write_text("5")
    base = float(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))) / 1024
    start = time.time()
    predicted = cluster_features(x, ClusterParams(0.55, 2, 20, 6, False))
    seconds = time.time() - start
    if average:  # the average-linkage step alone, on the same graph (the graph is built as for DBSCAN)
        from reidkit.analysis.cluster import average_linkage_labels, jaccard_graph

        graph = jaccard_graph(x, 20, 6)
        start = time.time()
        linked = average_linkage_labels(graph, 0.8)
        print(json.dumps({"n": n, "average_linkage_seconds": time.time() - start, "edges": len(graph.first),
                          "peak_rss_mb_with_average_linkage": peak_rss_mb(),
                          "average_linkage_bcubed_f": clustering_scores(labels, linked)["bcubed_f"]}))
        return
    print(json.dumps({"n": n, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_clustering_mb": base,
                      "peak_while_generating_mb": generation_peak,
                      "features_mb": x.nbytes / 2**20,
                      "neighbours": "exact tile scan" if n <= EXACT_LIMIT else "PCA-128 + faiss IVF, exact re-sort",
                      "bcubed_f": clustering_scores(labels, predicted)["bcubed_f"]}))


def neighbour_recall(n: int = 10000) -> dict:
    from reidkit.analysis.cluster import jaccard_graph

    x, labels = synthetic(n)
    exact = jaccard_graph(x, 20, 6)
    approx = jaccard_graph(x, 20, 6, exact_limit=0)
    e = set(zip(exact.first.tolist(), exact.second.tolist(), strict=True))
    a = set(zip(approx.first.tolist(), approx.second.tolist(), strict=True))
    same = labels[exact.first] == labels[exact.second]
    e_same = {k for k, s in zip(zip(exact.first.tolist(), exact.second.tolist(), strict=True), same, strict=True)
              if s}
    return {"n": n, "edge_recall": len(e & a) / len(e), "same_identity_edge_recall": len(e_same & a) / len(e_same)}


def image_speed(paths: np.ndarray, model: Path) -> dict:
    from reidkit.data.images import decode_images
    from reidkit.inference import build_extractor

    sample = list(paths[:400])
    start = time.time()
    pixels, _, _ = decode_images(sample, (192, 96))
    decode = len(sample) / (time.time() - start)
    extractor = build_extractor(model, device="cpu", batch_size=32)
    start = time.time()
    extractor.embed_uint8(pixels[:128])
    embed = 128 / (time.time() - start)
    return {"decode_images_per_s": decode, "embed_images_per_s": embed,
            "hours_for_100k_images": 100_000 * (1 / decode + 1 / embed) / 3600}


# ------------------------------------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val", type=Path, default=REPO / "runs" / "h3" / "cuhk03-val")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-pair", action="store_true")
    parser.add_argument("--scale-only", action="store_true", help="re-measure only the scale part, keep the rest")
    parser.add_argument("--clustering-only", action="store_true",
                        help="re-measure only the clustering tables (cached features), keep the rest")
    parser.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--average-linkage-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        return scale_child(args.scale_child)
    if args.average_linkage_child:
        return scale_child(args.average_linkage_child, average=True)
    if args.scale_only:
        return rescale()
    if args.clustering_only:
        return recluster(args.val)
    torch.set_num_threads(2)
    paths, pids, camids, in_a = load_val(args.val)
    report: dict = {"load_average_start": os.getloadavg(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "data": f"{args.val}: query + gallery of the 150 validation ids, {len(paths)} images; half A "
                            f"{int(in_a.sum())} images / 75 ids, half B {int((~in_a).sum())} images / 75 ids",
                    "verification": {}, "clustering": {}, "clustering_swapped": {}}
    ours_pairs = None
    for name, model in MODELS.items():
        features = cached_features(name, model, paths)
        row, pairs = embedding_verification(features, pids, camids, in_a)
        report["verification"][name] = row
        ours_pairs = pairs if ours_pairs is None else ours_pairs
        report["clustering"][name] = clustering(features, pids, camids, in_a)
        report["clustering_swapped"][name] = clustering(features, pids, camids, ~in_a)
        print(name, json.dumps(report["clustering"][name]["ours_chosen_on_other_half"])[:300], flush=True)
    if not args.skip_pair:
        report["verification"][PAIR_MODEL[0]] = pair_verification(PAIR_MODEL[1], paths, pids, camids, in_a)
    report["explain"] = explain_pictures(next(iter(MODELS.values())), paths, ours_pairs)
    if not args.skip_scale:
        report.update(measure_scale(paths, next(iter(MODELS.values()))))
    else:
        old = OUT / "verify_cluster.json"
        if old.is_file():  # keep the last measured scale figures
            previous = json.loads(old.read_text())
            for key in ("image_speed", "neighbour_recall_10k", "scale"):
                if key in previous:
                    report[key] = previous[key]
    report["load_average_end"] = os.getloadavg()
    (OUT / "verify_cluster.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (OUT / "verify_cluster.md").write_text(markdown(report))
    print((OUT / "verify_cluster.md").read_text())


def measure_scale(paths: np.ndarray, model: Path) -> dict:
    out = {"image_speed": image_speed(paths, model), "neighbour_recall_10k": neighbour_recall(), "scale": []}
    for n in (10_000, 100_000):
        done = subprocess.run([sys.executable, __file__, "--scale-child", str(n)], capture_output=True, text=True,
                              check=True)
        out["scale"].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(out["scale"][-1], flush=True)
    return out


def rescale() -> None:
    torch.set_num_threads(2)
    report = json.loads((OUT / "verify_cluster.json").read_text())
    paths, _, _, _ = load_val(REPO / "runs" / "h3" / "cuhk03-val")
    report.update(measure_scale(paths, next(iter(MODELS.values()))))
    report["load_average_scale"] = os.getloadavg()
    (OUT / "verify_cluster.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (OUT / "verify_cluster.md").write_text(markdown(report))


def recluster(val: Path) -> None:
    torch.set_num_threads(2)
    report = json.loads((OUT / "verify_cluster.json").read_text())
    paths, pids, camids, in_a = load_val(val)
    report["load_average_clustering"] = os.getloadavg()
    for name, model in MODELS.items():
        features = cached_features(name, model, paths)
        report["clustering"][name] = clustering(features, pids, camids, in_a)
        report["clustering_swapped"][name] = clustering(features, pids, camids, ~in_a)
        print(name, json.dumps(report["clustering"][name]["ours_chosen_on_other_half"])[:300], flush=True)
    report["load_average_clustering"] += os.getloadavg()
    (OUT / "verify_cluster.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (OUT / "verify_cluster.md").write_text(markdown(report))
    print((OUT / "verify_cluster.md").read_text())


def markdown(r: dict) -> str:
    lines = ["# Verification, calibration and clustering (CUHK03-NP validation identities)", "",
             f"Generated by `bench/verify_cluster.py`; protocol in its docstring and docs/verify_cluster.md. "
             f"{r['data']}. Load average at start {r['load_average_start'][0]:.1f}, end "
             f"{r['load_average_end'][0]:.1f} (2 shared cores: timings are pessimistic).", "",
             "## Verification (calibration fitted on half A, measured on half B)", "",
             "| model | ROC AUC | TAR @ FAR 1e-2 | TAR @ FAR 1e-3 | ECE before | ECE after Platt | ECE after isotonic "
             "| B pairs (same / different) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in r["verification"].items():
        lines.append(f"| {name} | {v['auc']:.4f} | {v['tar_at_far_0.01']:.3f} | {v['tar_at_far_0.001']:.3f} | "
                     f"{v['ece_before']:.3f} ({v['ece_before_mapping']}) | {v['ece_after_platt']:.3f} | "
                     f"{v['ece_after_isotonic']:.3f} | {v['b_same']} / {v['b_different']} |")
    if "load_average_clustering" in r:
        lines += ["", "Clustering tables re-measured with `--clustering-only`; load average then "
                      f"{r['load_average_clustering'][0]:.1f} (start) / {r['load_average_clustering'][3]:.1f} (end)."]
    for key, title in (("clustering", "chosen on half A, reported on half B"),
                       ("clustering_swapped", "chosen on half B, reported on half A")):
        lines += ["", f"## Clustering ({title}; baselines tuned on the reported half itself)", "",
                  "| model | method | setting | B-cubed F | pairwise P / R / F | NMI | ARI | clusters (true) | "
                  "unassigned |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, c in r[key].items():
            for method in ("ours_chosen_on_other_half", "ours_without_camera_correction", "dbscan_cosine",
                           "average_linkage_cosine"):
                m = c[method]
                setting = (f"eps {m['eps']}, min_samples {m['min_samples']}, k1 {m['k1']}, k2 {m['k2']}, lambda "
                           f"{m.get('lambda_value', 0)}, same-camera penalty {m.get('same_camera_penalty', 0)}"
                           if "k1" in m else
                           f"eps {m['eps']}, min_samples {m['min_samples']}" if "eps" in m else
                           f"threshold {m['distance_threshold']}")
                lines.append(f"| {name} | {method} | {setting} | {100 * m['bcubed_f']:.1f} | "
                             f"{100 * m['pairwise_precision']:.1f} / {100 * m['pairwise_recall']:.1f} / "
                             f"{100 * m['pairwise_f']:.1f} | {m['nmi']:.3f} | {m['ari']:.3f} | "
                             f"{m['num_clusters']} ({m['num_true']}) | {m['num_unassigned']} |")
    if "variants" in r:
        lines += ["", "## Variants on dense re-ranked distances (bench/cluster_variants.py; B-cubed F, each family's "
                      "setting chosen on one half and reported on the other; ceiling = best setting tuned on the "
                      "reported half itself)", "",
                  "| model | family | A -> B | B -> A | ceiling A / B |", "| --- | --- | --- | --- | --- |"]
        for name, families in r["variants"].items():
            for family, v in families.items():
                ab, ba = v["chosen_on_A_reported_on_B"], v["chosen_on_B_reported_on_A"]
                lines.append(f"| {name} | {family} | {100 * ab['bcubed_f']:.1f} | {100 * ba['bcubed_f']:.1f} | "
                             f"{100 * v['ceiling_A']:.1f} / {100 * v['ceiling_B']:.1f} |")
    if "scale" in r:
        lines += ["", "## Scale (synthetic 1280-d features, fresh process per size)", "",
                  "| crops | neighbours | time (s) | peak RSS clustering (MB) | RSS before (MB) | features (MB) | "
                  "B-cubed F |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in r["scale"]:
            lines.append(f"| {s['n']:,} | {s['neighbours']} | {s['seconds']:.0f} | {s['peak_rss_mb']:.0f} | "
                         f"{s['rss_before_clustering_mb']:.0f} | {s['features_mb']:.0f} | {100 * s['bcubed_f']:.1f} |")
        for a in r.get("average_linkage_scale", []):
            lines.append(f"\nAverage linkage alone on the same synthetic graph (`--average-linkage-child`): {a['n']:,} "
                         f"crops, {a['edges']:,} edges: {a['average_linkage_seconds']:.1f} s, peak RSS "
                         f"{a['peak_rss_mb_with_average_linkage']:.0f} MB, B-cubed F "
                         f"{100 * a['average_linkage_bcubed_f']:.1f}.")
        n = r["neighbour_recall_10k"]
        sp = r["image_speed"]
        lines += ["", f"Approximate neighbours against exact at 10k: {100 * n['edge_recall']:.1f}% of the kNN edges, "
                      f"{100 * n['same_identity_edge_recall']:.1f}% of the same-identity ones. Images: decoding "
                      f"{sp['decode_images_per_s']:.0f} crops/s, embedding (emb_val, 192x96) "
                      f"{sp['embed_images_per_s']:.1f} crops/s: {sp['hours_for_100k_images']:.1f} h for 100k "
                      "crops on this loaded machine (the clustering itself is the table above)."]
    lines += ["", "## Explain pictures (emb_val, half B pairs)", ""]
    for name, e in r.get("explain", {}).items():
        lines.append(f"- {name}: {e['a']} vs {e['b']}, cosine {e['cosine']:.3f} -> `{e['picture']}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
