"""Size, compute and CPU throughput of the multi-level similarity network (MLS) next to IDLA and the global-embedding
models, plus the validation results of the MLS training runs (and their ablations) if present.

    .venv/bin/python bench/bench_mls.py [--quick] [--runs runs/mls_cuhk03np runs/mls_high ...]

Writes docs/benchmarks/mls.json and docs/benchmarks/mls.md (not with --quick, a smoke run), and copies the runs'
ROC / confusion / CMC / training-curve pictures to docs/img/pair_<run>_*.png.

Per model: parameters; FLOPs per pair for a pair of new images (pair networks: forward(x1, x2); embedding models:
two embeddings, the distance is negligible); FLOPs per pair when ranking with cached per-image work (pair networks:
the pair layers only; embedding models: a D-dimensional distance); FLOPs per image; forward pairs/s at batch 256.
FLOPs: 2 x multiply-accumulates of convolutions and matrix products (reidkit.models.complexity).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bench_pairnets import cpu_name, run_results, throughput
from reidkit.models import build_model
from reidkit.models.complexity import count_flops, count_params
from reidkit.training.pair import retain_freed_memory
from reidkit.utils import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "docs" / "benchmarks" / "mls.json"
OUT_MD = ROOT / "docs" / "benchmarks" / "mls.md"

# name -> (model name, options); the MLS variants are the ablations of docs/pair_networks.md
PAIR_MODELS = {
    "mls (low+mid+high, STN)": ("mls", {}),
    "mls (high only, STN)": ("mls", {"levels": ["high"]}),
    "mls (mid+high, STN)": ("mls", {"levels": ["mid", "high"]}),
    "mls (low+mid+high, fixed patches)": ("mls", {"use_stn": False}),
    "idla": ("idla", {}),
}
EMBEDDING_MODELS = {
    "efficientnet_lite0 embedding, 128x64": {"backbone": "efficientnet_lite0", "input_size": (128, 64)},
    "resnet50 embedding, 256x128": {"backbone": "resnet50", "input_size": (256, 128)},
}
DEFAULT_RUNS = ["mls_cuhk03np", "mls_high", "mls_nostn", "mls_ce", "idla_cuhk03np"]


def images(batch: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def pair_model_row(name: str, options: dict, batch: int, repeats: int, threads: list[int]) -> dict:
    torch.manual_seed(0)
    model = build_model(name, **options).eval()
    x1, x2 = images(batch, model.input_size, 1), images(batch, model.input_size, 2)
    one1, one2 = x1[:1], x2[:1]
    with torch.inference_mode():
        f1, f2 = model.embed(one1), model.embed(one2)
        row = {"input_size": list(model.input_size), "params": count_params(model),
               "flops_per_pair": count_flops(model, one1, one2),
               "flops_per_pair_ranking": count_flops(model.pair_logits, f1, f2),
               "flops_per_image": count_flops(model.embed, one1), "throughput": {}}
        feats1, feats2 = model.embed(x1), model.embed(x2)
        for t in threads:
            torch.set_num_threads(t)
            row["throughput"][str(t)] = {
                "forward_pairs_per_s": throughput(lambda: model(x1, x2), batch, repeats),
                "ranking_pairs_per_s": throughput(lambda: model.pair_logits(feats1, feats2), batch, repeats),
                "images_per_s": throughput(lambda: model.embed(x1), batch, repeats)}
    return row


def embedding_row(options: dict, batch: int, repeats: int, threads: list[int]) -> dict:
    torch.manual_seed(0)
    model = build_model("embedding", **options).eval()
    size = tuple(options["input_size"])
    x = images(2 * batch, size, 3)  # a batch of pairs = twice as many new images
    with torch.inference_mode():
        dim = model(x[:1]).shape[1]  # eval mode: the L2-normalised embedding
        per_image = count_flops(model, x[:1])
        row = {"input_size": list(size), "params": count_params(model), "flops_per_pair": 2 * per_image,
               "flops_per_pair_ranking": 2 * dim, "flops_per_image": per_image, "throughput": {}}
        for t in threads:
            torch.set_num_threads(t)
            row["throughput"][str(t)] = {"forward_pairs_per_s": throughput(lambda: model(x), batch, repeats),
                                         "images_per_s": throughput(lambda: model(x[:batch]), batch, repeats)}
    return row


def mflop(n: int) -> str:
    return f"{n / 1e6:,.1f}" if n >= 1e5 else f"{n / 1e6:.4f}"


def markdown(report: dict) -> str:
    env = report["environment"]
    threads = [str(t) for t in report["threads"]]
    lines = [
        "# MLS (multi-level similarity network): size, compute, throughput and validation", "",
        f"Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']} (CPU), load average "
        f"{env['load_before']:.1f} before / {env['load_after']:.1f} after (~2 after: its own threads). "
        f"Batch {report['batch']}, float32, medians of {report['repeats']} runs. FLOPs = 2 x multiply-accumulates of "
        "convolutions and matrix products (`reidkit.models.complexity`).", "",
        "**Ranking** = pairs scored with cached per-image work, as `score()` / a gallery search does (pair networks: "
        "the pair layers only; embedding models: one distance).", "",
        "| model | input | params | MFLOP / pair (new images) | MFLOP / pair (ranking) | MFLOP / image | "
        + " | ".join(f"forward pairs/s ({t} thr.)" for t in threads) + " | "
        + " | ".join(f"ranking pairs/s ({t} thr.)" for t in threads) + " |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * (2 * len(threads)),
    ]
    for name, r in report["models"].items():
        fwd = [f"{r['throughput'][t]['forward_pairs_per_s']['per_second']:,.0f}" for t in threads]
        rank = [f"{r['throughput'][t]['ranking_pairs_per_s']['per_second']:,.0f}"
                if "ranking_pairs_per_s" in r["throughput"][t] else "(distance)" for t in threads]
        lines.append(f"| {name} | {r['input_size'][0]}x{r['input_size'][1]} | {r['params']:,} | "
                     f"{mflop(r['flops_per_pair'])} | {mflop(r['flops_per_pair_ranking'])} | "
                     f"{mflop(r['flops_per_image'])} | " + " | ".join(fwd + rank) + " |")
    lines.append("")
    if report["runs"]:
        lines += ["## Validation (150 carved-out CUHK03-NP identities)", "",
                  "| run | model | epochs | train min | pair acc. (balanced) | AUC | rank-1 | rank-5 | rank-10 "
                  "| rank-20 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in report["runs"].items():
            p, c = r["val_pairs"], r["cmc"]
            if p.get("balanced_accuracy") is None or c.get("rank1") is None:
                continue
            lines.append(f"| {name} | {r['model']} | {r['epochs_done']} | {r['train_minutes']:.0f} | "
                         f"{p['balanced_accuracy']:.1f}% | {p['auc']:.3f} | {c['rank1']:.1f}% (+-{c['rank1_std']:.1f}) "
                         f"| {c['rank5']:.1f}% | {c['rank10']:.1f}% | {c['rank20']:.1f}% |")
        lines += ["", "CMC: CUHK03 classic single-shot protocol (100 validation identities, camera 1 query, camera 2 "
                  "gallery, 10 random draws; +- = std of rank-1 over draws). Issue target: MLS rank-1 >= IDLA's.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing .json")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure")
    parser.add_argument("--quick", action="store_true",
                        help="batch 4, 1 repeat, 1 thread, nothing written: checks the script runs")
    parser.add_argument("--runs", type=Path, nargs="*", default=[ROOT / "runs" / r for r in DEFAULT_RUNS])
    args = parser.parse_args()
    if args.markdown_only:
        atomic_write_text(markdown(json.loads(OUT_JSON.read_text())), OUT_MD)
        return
    if args.quick:
        args.batch, args.repeats, args.threads = 4, 1, [1]
    retain_freed_memory()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    models = {name: pair_model_row(model, options, args.batch, args.repeats, args.threads)
              for name, (model, options) in PAIR_MODELS.items()}
    models.update({name: embedding_row(options, args.batch, args.repeats, args.threads)
                   for name, options in EMBEDDING_MODELS.items()})
    report = {"batch": args.batch, "repeats": args.repeats, "threads": args.threads, "models": models,
              "runs": run_results([r for r in args.runs if (r / "log.jsonl").is_file()], copy_pictures=not args.quick),
              "environment": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                              "load_before": load_before, "load_after": os.getloadavg()[0],
                              "seconds": time.perf_counter() - start}}
    if not args.quick:  # a smoke run must not overwrite the published numbers
        atomic_write_json(report, OUT_JSON)
        atomic_write_text(markdown(report), OUT_MD)
    print(markdown(report))


if __name__ == "__main__":
    main()
