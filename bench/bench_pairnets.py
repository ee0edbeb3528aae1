"""Throughput of the pair networks (IDLA, IDLA-NCC) and of the NCC layer on CPU, plus the validation results of
the training runs if present.

    .venv/bin/python bench/bench_pairnets.py [--quick] [--runs runs/idla_cuhk03np runs/idla_ncc_cuhk03np]

Writes docs/benchmarks/pairnets.json and docs/benchmarks/pairnets.md, and copies the runs' ROC / confusion / CMC /
training-curve pictures to docs/img/pair_<run>_*.png. Timings are medians of repeated runs after a warm-up; the
machine load (1-minute load average) is recorded before and after, because the project machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reidkit.export.onnx import export_pair_onnx
from reidkit.models import build_model
from reidkit.models.pair.native import native_library
from reidkit.models.pair.ncc import NormalizedCrossCorrelation
from reidkit.training.pair import plot_pair_confusion, retain_freed_memory
from reidkit.utils import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "docs" / "benchmarks" / "pairnets.json"
OUT_MD = ROOT / "docs" / "benchmarks" / "pairnets.md"
IMG_DIR = ROOT / "docs" / "img"
MAP_SHAPE = (25, 37, 12)  # IDLA trunk output for 160x60 inputs: the shape the NCC target refers to


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up: oneDNN primitive creation, allocator growth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "best_s": min(times)}


def throughput(fn: Callable[[], object], items: int, repeats: int) -> dict[str, float]:
    t = timed(fn, repeats)
    return {"per_second": items / t["median_s"], "best_per_second": items / t["best_s"], **t}


def unfold_pair_layers(model, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """The first implementation (F.unfold + broadcast matmul), kept here to measure what the rewrite gained."""
    feats = []
    d = model.differences
    for a, b, summary, across in ((f1, f2, d.summary_k, d.across_k), (f2, f1, d.summary_k_prime, d.across_k_prime)):
        n, c, h, w = a.shape
        diffs = torch.relu_(a.unsqueeze(2) - F.unfold(b, 5, padding=2).view(n, c, 25, h, w))
        weight = summary.conv.weight.reshape(summary.conv.out_channels, -1)
        out = F.relu(torch.matmul(weight, diffs.reshape(n, c * 25, h * w)) + summary.conv.bias.view(1, -1, 1))
        feats.append(across(out.view(n, -1, h, w)).flatten(1))
    return model.head(torch.cat(feats, 1))


def naive_ncc_one_pair(a: np.ndarray, b: np.ndarray, radius: int = 2, eps: float = 1e-4) -> np.ndarray:
    """Plain Python loops over channels and positions (numpy only for the 25-element patch maths)."""
    c, h, w = a.shape
    pa, pb = np.pad(a, ((0, 0), (2, 2), (2, 2))), np.pad(b, ((0, 0), (2, 2), (2, 2)))
    out = np.zeros((c, h, w, 2 * radius + 1, w), dtype=np.float32)
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                p = pa[ch, y:y + 5, x:x + 5].ravel()
                p = (p - p.mean()) / np.sqrt(((p - p.mean()) ** 2).sum() + eps)
                for dy in range(-radius, radius + 1):
                    if 0 <= y + dy < h:
                        for x2 in range(w):
                            q = pb[ch, y + dy:y + dy + 5, x2:x2 + 5].ravel()
                            q = (q - q.mean()) / np.sqrt(((q - q.mean()) ** 2).sum() + eps)
                            out[ch, y, x, dy + radius, x2] = p @ q
    return out


def bench_model(name: str, x1: torch.Tensor, x2: torch.Tensor, repeats: int) -> dict[str, dict]:
    torch.manual_seed(0)
    model = build_model(name).eval()
    batch = len(x1)
    results = {}
    with torch.inference_mode():
        results[f"{name} forward(x1, x2)"] = throughput(lambda: model(x1, x2), batch, repeats)
        feats1, feats2 = model.embed(x1), model.embed(x2)
        results[f"{name} pair layers only (cached trunk features, as in score())"] = throughput(
            lambda: model.pair_logits(feats1, feats2), batch, repeats)
        if name == "idla":
            plain = build_model(name, native=False).eval()
            plain.load_state_dict(model.state_dict())
            results["idla pair layers only, PyTorch path (native=False)"] = throughput(
                lambda: plain.pair_logits(feats1, feats2), batch, repeats)
            results["idla trunk only (images/s)"] = throughput(lambda: model.embed(x1), batch, repeats)
            results["idla pair layers, first unfold-based version"] = throughput(
                lambda: unfold_pair_layers(model, feats1, feats2), batch, repeats)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                results["idla forward(x1, x2), bf16 autocast"] = throughput(lambda: model(x1, x2), batch, repeats)
        if name == "idla_ncc":
            model.fuse_summary = False
            results["idla_ncc pair layers, correlation tensor then summary (session 5 path)"] = throughput(
                lambda: model.pair_logits(feats1, feats2), batch, repeats)
            model.fuse_summary = True
    return results


def quantize_pair_onnx(source: Path, target: Path, calibration: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations) calibrated on `calibration`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x1": a, "x2": b} for a, b in calibration])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def runtime_sessions(onnx_fp32: Path, onnx_int8: Path, threads: int) -> dict[str, Callable]:
    """name -> run(x1, x2) for onnxruntime and OpenVINO on the fp32 and int8 graphs (those that import)."""
    runners: dict[str, Callable] = {}
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        for label, path in (("fp32", onnx_fp32), ("int8", onnx_int8)):
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            runners[f"onnxruntime {label}"] = lambda a, b, s=session: s.run(None, {"x1": a, "x2": b})[0]
    except ImportError:
        pass
    try:
        import openvino  # noqa: F401  (ImportError: no OpenVINO rows)

        from reidkit.utils import openvino_core

        core = openvino_core()
        for label, path, precision in (("fp32", onnx_fp32, "f32"), ("bf16", onnx_fp32, "bf16"),
                                       ("int8", onnx_int8, "f32")):
            compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                             "INFERENCE_PRECISION_HINT": precision})
            request, output = compiled.create_infer_request(), compiled.output(0)
            runners[f"OpenVINO {label}"] = lambda a, b, r=request, o=output: r.infer({"x1": a, "x2": b})[o]
    except ImportError:
        pass
    return runners


def bench_runtimes(x1: torch.Tensor, x2: torch.Tensor, repeats: int, threads: int, work: Path) -> dict[str, dict]:
    """IDLA forward(x1, x2) exported to ONNX, on onnxruntime / OpenVINO in fp32, bf16 and int8."""
    torch.manual_seed(0)
    model = build_model("idla").eval()
    fp32, int8 = work / "idla.onnx", work / "idla_int8.onnx"
    if not int8.is_file():
        export_pair_onnx(model, fp32)
        half = len(x1) // 2
        quantize_pair_onnx(fp32, int8, [(x1[:half].numpy(), x2[:half].numpy())])
    a, b = x1.numpy(), x2.numpy()
    return {f"idla forward(x1, x2), {name}": throughput(lambda run=run: run(a, b), len(x1), repeats)
            for name, run in runtime_sessions(fp32, int8, threads).items()}


def load_run_split(run: Path, data_root: Path) -> tuple[torch.nn.Module, dict, object] | None:
    """(eval-mode best.pt model, its data config, the carve-out it trained with), or None if either is missing."""
    from reidkit.checkpoint import model_from_checkpoint
    from reidkit.data.split import carve_validation_records
    from reidkit.training.pair import load_train_records

    if not (run / "best.pt").is_file() or not data_root.is_dir():
        return None
    model, payload = model_from_checkpoint(run / "best.pt")
    data = payload["config"]["data"]
    split = carve_validation_records(load_train_records(data_root), data["val_ids"], data["split_seed"])
    return model.eval(), data, split


def int8_validation(run: Path, data_root: Path, work: Path, threads: int) -> dict | None:
    """Balanced validation pair accuracy of a trained pair network: PyTorch fp32 vs its int8 ONNX export.

    Calibration uses training images only: 4 batches of 64 pairs among the first 512 images of the carve-out's
    training side (image i with image i + 256).
    """
    from reidkit.data.pairs import balanced_pairs
    from reidkit.data.records import split_arrays
    from reidkit.data.store import load_image_tensor
    from reidkit.metrics.verification import verification_report

    loaded = load_run_split(run, data_root)
    if loaded is None:
        return None
    model, data, split = loaded
    paths, pids, cams = split_arrays(split.query + split.gallery)  # the trainer's validation pairs
    pairs = balanced_pairs(pids, cams, np.random.default_rng(data["split_seed"]), data["cross_camera"])
    images = model.prepare(load_image_tensor(paths, model.input_size, data["resize"], show_progress=False)).numpy()
    calib = model.prepare(load_image_tensor([r.path for r in split.train[:512]], model.input_size, data["resize"],
                                            show_progress=False)).numpy()
    fp32, int8 = work / f"{run.name}.onnx", work / f"{run.name}_int8.onnx"
    export_pair_onnx(model, fp32)
    quantize_pair_onnx(fp32, int8, [(calib[i:i + 64], calib[i + 256:i + 320]) for i in range(0, 256, 64)])

    def pytorch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(a), torch.from_numpy(b)).numpy()

    runners = {"PyTorch fp32": pytorch,
               **{k: v for k, v in runtime_sessions(fp32, int8, threads).items() if "int8" in k}}
    logits = {name: np.concatenate([run_pairs(images[pairs.first[i:i + 256]], images[pairs.second[i:i + 256]])
                                    for i in range(0, len(pairs.first), 256)])
              for name, run_pairs in runners.items()}
    same = logits["PyTorch fp32"][:, 1] > logits["PyTorch fp32"][:, 0]
    out: dict = {"pairs": len(pairs.first)}
    for name, lg in logits.items():
        report = verification_report(lg[:, 1] - lg[:, 0], pairs.label, 0.0)
        out[name] = {"balanced_accuracy": report["balanced_accuracy"], "auc": report["auc"],
                     "same_decision_as_fp32": float(np.mean((lg[:, 1] > lg[:, 0]) == same))}
    return out


def bench_models(x1: torch.Tensor, x2: torch.Tensor, repeats: int) -> dict[str, dict]:
    return {**bench_model("idla", x1, x2, repeats), **bench_model("idla_ncc", x1, x2, repeats)}


def bench_ncc(batch: int, repeats: int, naive: bool = True) -> dict[str, dict]:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(batch, *MAP_SHAPE, generator=gen), torch.rand(batch, *MAP_SHAPE, generator=gen)
    layer, torch_path = NormalizedCrossCorrelation(), NormalizedCrossCorrelation(native=False)
    kernel = "native C kernel" if native_library() is not None else "no C compiler: PyTorch path"
    results = {}
    with torch.inference_mode():
        results[f"NCC layer forward (N, 1500, 37, 12) maps ({kernel})"] = throughput(lambda: layer(a, b), batch,
                                                                                   repeats)
        results[f"NCC layer correlate_padded, no final transpose ({kernel})"] = throughput(
            lambda: layer.correlate_padded(a, b), batch, repeats)
        results["NCC layer correlate_padded, PyTorch path (native=False)"] = throughput(
            lambda: torch_path.correlate_padded(a, b), batch, repeats)
    if not naive:
        return results
    # One channel of one pair, times the channel count: the full pair takes minutes of loop overhead.
    naive_time = timed(lambda: naive_ncc_one_pair(a[0, :1].numpy(), b[0, :1].numpy()), 1)
    per_pair = naive_time["median_s"] * MAP_SHAPE[0]
    results["NCC naive Python loops (1 channel timed, x25)"] = {"per_second": 1 / per_pair, "median_s": per_pair}
    return results


def run_results(run_dirs: list[Path], copy_pictures: bool = True) -> dict[str, dict]:
    """Validation numbers of finished training runs; their pictures are copied to docs/img."""
    out = {}
    for run in run_dirs:
        summary_path = run / "summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
        final = summary.get("final", {})
        out[run.name] = {
            "model": summary["model"], "epochs_done": summary["epochs_done"],
            "best_epoch": summary["best"].get("epoch"),
            "train_minutes": sum(r["epoch_seconds"] for r in rows) / 60,
            "train_pairs_per_second": float(np.mean([r["pairs_per_second"] for r in rows])) if rows else None,
            "val_pairs": {k: final.get("pairs", {}).get(k) for k in ("accuracy", "balanced_accuracy", "auc",
                                                                    "confusion_matrix", "num_same", "num_different")},
            "cmc": {k: final.get("cmc", {}).get(k) for k in ("rank1", "rank5", "rank10", "rank20", "rank1_std",
                                                            "num_ids", "num_draws")},
            # test-time views (both input orders + mirrored pair), reported by the trainer since session 6
            "tta": ({"balanced_accuracy": final["tta"]["pairs"]["balanced_accuracy"],
                     "auc": final["tta"]["pairs"]["auc"], "rank1": final["tta"]["cmc"]["rank1"],
                     "calibrated": final["tta"].get("calibrated", {}).get("balanced_accuracy")}
                    if "tta" in final else None),
            # validation accuracy at the threshold fitted on training-identity pairs (since session 8)
            "calibrated": final.get("calibrated", {}).get("balanced_accuracy"),
            "per_epoch": [{"epoch": r["epoch"], "loss": r["loss"], "train_accuracy": r["train_accuracy"],
                           **{f"val_{k}": v for k, v in r.get("val", {}).items()}} for r in rows],
        }
        IMG_DIR.mkdir(parents=True, exist_ok=True)
        if "tta" in final and not (run / "pair_confusion_tta.png").is_file() and copy_pictures:
            # runs from before the trainer drew it: the same picture from the numbers in summary.json
            plot_pair_confusion(final["tta"]["pairs"], run / "pair_confusion_tta.png",
                                f"{summary['model']}, test-time views")
        for picture in ("pair_roc.png", "pair_confusion.png", "pair_confusion_tta.png", "pair_cmc.png",
                        "pair_training_curves.png"):
            if (run / picture).is_file() and copy_pictures:
                shutil.copyfile(run / picture, IMG_DIR / picture.replace("pair_", f"pair_{run.name}_", 1))
    if out and copy_pictures:
        plot_validation_tracks(out, IMG_DIR / "pair_validation_tracks.png")
    return out


def plot_validation_tracks(runs: dict[str, dict], path: Path) -> None:
    """Balanced validation pair accuracy against the epoch, one line per run (its pace at a glance)."""
    from reidkit.training.plots import plot_metric_per_epoch

    series = []
    for name, run in runs.items():
        rows = [r for r in run["per_epoch"] if "val_balanced_accuracy" in r]
        label = f"{name} ({run['model']})"
        series.append((label, [r["epoch"] for r in rows], [r["val_balanced_accuracy"] for r in rows], label))
    plot_metric_per_epoch(series, path, "balanced validation pair accuracy (%)",
                          "Pair networks on CUHK03-NP validation", target=90)


def stripe_histograms(images: torch.Tensor, stripes: int = 6, bins: int = 8) -> np.ndarray:
    """Baseline embedding: joint RGB histograms of horizontal stripes, square-rooted and L2-normalised."""
    n, _, h, _ = images.shape
    q = (images.long() * bins) // 256
    colour = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (N, H, W)
    stripe = (torch.arange(h) * stripes // h).view(1, h, 1).expand_as(colour)
    index = (torch.arange(n).view(n, 1, 1) * stripes + stripe) * bins ** 3 + colour
    hist = torch.bincount(index.flatten(), minlength=n * stripes * bins ** 3).view(n, -1).double().sqrt()
    return (hist / hist.norm(dim=1, keepdim=True)).numpy()


RERANK_WEIGHTS = (1.0, 0.5, 0.25)  # pair_weight of rerank_top_k: pair order alone, then rank fusions


def bench_rerank(run: Path, data_root: Path, top_k: int = 20, embedding: Path | None = None,
                 weights: tuple[float, ...] = RERANK_WEIGHTS) -> dict | None:
    """The practical use of a pair network: re-rank an embedding's top-k on the validation query/gallery.

    The embedding is a reidkit checkpoint trained on the same carve-out (`embedding`), else stripe colour
    histograms (a weak, training-free baseline). The pair scores are computed once and re-used for each
    `pair_weight` of the rank fusion.
    """
    from reidkit.data.store import load_image_tensor
    from reidkit.metrics import compute_distance_matrix, evaluate_rank_full
    from reidkit.rerank.pair import pair_network_scorer, rerank_top_k

    loaded = load_run_split(run, data_root)
    if loaded is None:
        return None
    model, data, split = loaded
    size = model.input_size
    q_img = load_image_tensor([r.path for r in split.query], size, show_progress=False)
    g_img = load_image_tensor([r.path for r in split.gallery], size, show_progress=False)
    ids = [np.array([getattr(r, key) for r in recs]) for recs in (split.query, split.gallery)
           for key in ("pid", "camid")]
    q_pids, q_cams, g_pids, g_cams = ids
    if embedding is not None:
        from reidkit.inference.extractor import Extractor

        extractor = Extractor(embedding, device="cpu")
        q_feat, g_feat = (extractor.embed([r.path for r in recs]) for recs in (split.query, split.gallery))
        baseline, metric = f"embedding {embedding}", "cosine"
    else:
        q_feat, g_feat = stripe_histograms(q_img), stripe_histograms(g_img)
        baseline, metric = "stripe colour histograms", "sqeuclidean"
    dist = np.asarray(compute_distance_matrix(q_feat, g_feat, metric=metric))
    scorer, memo = pair_network_scorer(model, q_img, g_img), {}

    def scores_once(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:  # same top-k for every weight
        if "scores" not in memo:
            start = time.perf_counter()
            memo["scores"], memo["seconds"] = scorer(rows, cols), time.perf_counter() - start
        return memo["scores"]

    rankings = [(baseline, dist)]
    for weight in weights:
        label = f"pair score x {weight:g} + embedding x {1 - weight:g} (rank fusion)" if weight < 1 else "pair score"
        rankings.append((f"+ {run.name} re-ranks the top-{top_k}: {label}",
                         rerank_top_k(dist, scores_once, k=top_k, pair_weight=weight)))
    out = {"queries": len(q_pids), "gallery": len(g_pids), "top_k": top_k, "rerank_seconds": memo["seconds"]}
    for name, matrix in rankings:
        r = evaluate_rank_full(matrix, q_pids, g_pids, q_cams, g_cams, max_rank=20)
        out[name] = {"rank1": 100 * float(r.cmc[0]), "rank5": 100 * float(r.cmc[4]), "mAP": 100 * r.mAP}
    return out


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Pair networks: throughput and validation results", "",
        f"Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']} (CPU). The machine is shared with "
        f"other engineers' jobs: 1-minute load average {env['load_before']:.1f} before and {env['load_after']:.1f} "
        "after this run, so the numbers are noisy (and pessimistic when the load is high); compare rows within one "
        "run.",
        *([f"The PyTorch model rows (IDLA, IDLA-NCC, NCC layer) were re-measured on their own after the native "
           f"kernels were added (`--models-only`, {env['models_remeasured']['repeats']} repeats, load average "
           f"{env['models_remeasured']['load_before']:.1f} before, {env['models_remeasured']['load_after']:.1f} after"
           + (f"; {env['models_remeasured']['note']}" if env["models_remeasured"].get("note") else "")
           + "); the ONNX / OpenVINO rows are from the full run."]
          if "models_remeasured" in env else []),
        "", f"## Throughput (batch {report['batch']}, float32 unless noted, medians of {report['repeats']} runs)", "",
    ]
    thread_counts = list(report["throughput"])
    lines += ["| what | " + " | ".join(f"{t} thread(s): median (best) per s" for t in thread_counts) + " |",
              "|---|" + "---:|" * len(thread_counts)]
    for name in report["throughput"][thread_counts[0]]:
        cells = []
        for t in thread_counts:
            r = report["throughput"][t].get(name)
            if r is None:
                cells.append("-")
            elif r["per_second"] < 1:
                cells.append(f"{r['median_s']:.1f} s per pair")
            else:
                cells.append(f"{r['per_second']:,.1f} ({r['best_per_second']:,.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Targets from the issue: IDLA >= 2,000 pairs/s at batch 256 and NCC >= 1,000 pairs/s for 37x12x25 "
              "maps, both on 2 idle cores. See docs/pair_networks.md for the discussion.", ""]
    if report["runs"]:
        lines += ["## Validation (150 carved-out CUHK03-NP identities)", "",
                  "| run | epochs | train min | pair acc. (balanced) | at the threshold fitted on train ids | AUC "
                  "| rank-1 | rank-5 | rank-10 | rank-20 | with test-time views: pair acc. (fitted threshold) / AUC / "
                  "rank-1 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

        def percent(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}%"

        for name, r in report["runs"].items():
            p, c, t = r["val_pairs"], r["cmc"], r.get("tta")
            views = (f"{t['balanced_accuracy']:.1f}% ({percent(t.get('calibrated'))}) / {t['auc']:.3f} / "
                     f"{t['rank1']:.1f}%" if t else "-")
            lines.append(f"| {name} | {r['epochs_done']} | {r['train_minutes']:.0f} | "
                         f"{p['balanced_accuracy']:.1f}% | {percent(r.get('calibrated'))} | {p['auc']:.3f} "
                         f"| {c['rank1']:.1f}% (+-{c['rank1_std']:.1f}) "
                         f"| {c['rank5']:.1f}% | {c['rank10']:.1f}% | {c['rank20']:.1f}% | {views} |")
        lines += ["", "CMC: CUHK03 classic single-shot protocol - 100 validation identities, camera 1 image as query, "
                  "camera 2 image as gallery, averaged over 10 random draws (+- = std of rank-1 over draws). "
                  "Test-time views: scores averaged over both input orders and the mirrored pair "
                  "(`eval.symmetric`, `eval.flip`; 4x the pair-layer cost).", ""]
    for run, r in report.get("int8", {}).items():
        lines += [f"## int8 deployment of `{run}`: validation pairs, fp32 vs int8", "",
                  "Static int8 quantisation of the ONNX export (onnxruntime `quantize_static`, QDQ, per-channel int8 "
                  "weights, uint8 activations) calibrated on 256 training pairs; the same "
                  f"{r['pairs']:,} balanced validation pairs as above.", "",
                  "| runtime | balanced accuracy | AUC | same decision as fp32 |", "|---|---:|---:|---:|"]
        for name, v in r.items():
            if isinstance(v, dict):
                lines.append(f"| {name} | {v['balanced_accuracy']:.1f}% | {v['auc']:.3f} | "
                             f"{100 * v['same_decision_as_fp32']:.1f}% |")
        lines.append("")
    for run, rerank in report.get("rerank", {}).items():
        lines += [f"## Re-ranking an embedding's top-{rerank['top_k']} with `{run}`", "",
                  f"Validation carve-out as query/gallery ({rerank['queries']} queries, {rerank['gallery']} gallery "
                  f"images, market protocol); scoring the {rerank['queries'] * rerank['top_k']:,} pairs took "
                  f"{rerank['rerank_seconds']:.0f} s.", "",
                  "| ranking | rank-1 | rank-5 | mAP |", "|---|---:|---:|---:|"]
        for name, r in rerank.items():
            if isinstance(r, dict):
                lines.append(f"| {name} | {r['rank1']:.1f}% | {r['rank5']:.1f}% | {r['mAP']:.1f}% |")
        lines.append("")
    return "\n".join(lines) + "\n"


def remeasure_models(batch: int, repeats: int, threads: list[int], note: str = "") -> None:
    """Replace the PyTorch model rows (IDLA, IDLA-NCC, NCC layer) of the published report; the ONNX / OpenVINO
    rows, the int8 and validation sections stay as measured."""
    report = json.loads(OUT_JSON.read_text())
    if report["batch"] != batch:
        raise SystemExit(f"--models-only: the report was measured at batch {report['batch']}, not {batch}")
    load_before = os.getloadavg()[0]
    gen = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(batch, 3, 160, 60, generator=gen), torch.randn(batch, 3, 160, 60, generator=gen)
    for count in threads:
        torch.set_num_threads(count)
        rows = report["throughput"].setdefault(str(count), {})
        for stale in [name for name in rows if name.startswith("NCC layer")]:  # row names changed with the kernel
            del rows[stale]
        rows.update({**bench_models(x1, x2, repeats), **bench_ncc(batch, repeats, naive=False)})
    report["environment"].pop("ncc_remeasured", None)
    report["environment"]["models_remeasured"] = {"load_before": load_before, "load_after": os.getloadavg()[0],
                                                  "repeats": repeats, "note": note}
    atomic_write_json(report, OUT_JSON)
    atomic_write_text(markdown(report), OUT_MD)
    print(markdown(report))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing .json")
    parser.add_argument("--validation-only", action="store_true",
                        help="replace only the validation section (the --runs' summaries) of the existing report")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure")
    parser.add_argument("--quick", action="store_true", help="batch 32, 1 repeat: checks the script runs")
    parser.add_argument("--models-only", action="store_true",
                        help="re-measure only the PyTorch model rows (IDLA, IDLA-NCC, NCC layer), merged into the "
                             "existing .json")
    parser.add_argument("--note", default="", help="--models-only: a remark on the conditions, printed in the report")
    parser.add_argument("--runs", type=Path, nargs="*", default=[ROOT / "runs" / "idla_cuhk03np",
                                                                 ROOT / "runs" / "idla_ncc_cuhk03np"])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cuhk03np-detected",
                        help="dataset root for the re-ranking section")
    parser.add_argument("--embedding", type=Path, help="embedding checkpoint (same carve-out) whose top-k to re-rank")
    parser.add_argument("--rerank-only", action="store_true",
                        help="replace only the re-ranking section (--runs on --embedding's top-k) of the report")
    args = parser.parse_args()
    if args.markdown_only or args.validation_only or args.rerank_only:
        report = json.loads(OUT_JSON.read_text())
        if args.validation_only:
            report["runs"] = run_results(args.runs)
        if args.rerank_only:
            reranks = {run.name: bench_rerank(run, args.data, embedding=args.embedding) for run in args.runs}
            report["rerank"] = {name: r for name, r in reranks.items() if r}
        if args.validation_only or args.rerank_only:
            atomic_write_json(report, OUT_JSON)
        atomic_write_text(markdown(report), OUT_MD)
        return
    if args.quick:
        args.batch, args.repeats = 32, 1
    retain_freed_memory()
    if args.models_only:
        remeasure_models(args.batch, args.repeats, args.threads, args.note)
        return
    load_before = os.getloadavg()[0]
    report: dict = {"batch": args.batch, "repeats": args.repeats, "throughput": {}}
    gen = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(args.batch, 3, 160, 60, generator=gen), torch.randn(args.batch, 3, 160, 60, generator=gen)
    with tempfile.TemporaryDirectory(prefix="bench-pairnets-") as work:
        for threads in args.threads:
            torch.set_num_threads(threads)
            report["throughput"][str(threads)] = {
                **bench_models(x1, x2, args.repeats), **bench_runtimes(x1, x2, args.repeats, threads, Path(work)),
                **bench_ncc(args.batch, args.repeats, naive=threads == args.threads[0])}
        if not args.quick:
            int8 = {run.name: int8_validation(run, args.data, Path(work), max(args.threads)) for run in args.runs[:1]}
            report["int8"] = {name: r for name, r in int8.items() if r}
    report["runs"] = run_results(args.runs, copy_pictures=not args.quick)
    if not args.quick:
        reranks = {run.name: bench_rerank(run, args.data, embedding=args.embedding) for run in args.runs}
        report["rerank"] = {name: r for name, r in reranks.items() if r}
    report["environment"] = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                             "load_before": load_before, "load_after": os.getloadavg()[0]}
    if not args.quick:  # a smoke run must not overwrite the published numbers
        atomic_write_json(report, OUT_JSON)
        atomic_write_text(markdown(report), OUT_MD)
    print(markdown(report))


if __name__ == "__main__":
    main()
