"""ACRN on synthetic data with attribute labels: with and without the attribute term of the triplet loss.

No real attribute-labelled re-id data is at hand, so this measures on the synthetic generator's identities, whose
attribute labels are the true values it drew (reidkit.data.synth.identity_attributes). Runs (same data, budget,
seed; configs/acrn_synth.yaml):
  baseline    no attributes at all (attribute loss weight 0, gamma 0, fusion weight 0): the embedding recipe
  gamma0      attribute head trained with the weighted cross-entropy, triplet without the attribute term
  gamma1      the same plus the ACRN attribute term, gamma = 1
Each reports the validation (held-out identities) rank-1 / mAP of the fused descriptor and of the ReID features
alone, and the accuracy of each attribute (p > 0.5) against the majority-class predictor.

    nohup nice -n 10 .venv/bin/python bench/acrn_synth.py > runs/attrs/acrn_bench.log 2>&1 &
Writes docs/benchmarks/acrn.json and docs/benchmarks/acrn.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from reidkit.config import load_config  # noqa: E402
from reidkit.data import load_dataset  # noqa: E402
from reidkit.data.records import attribute_matrix, attribute_names  # noqa: E402
from reidkit.data.synth import SynthConfig, generate_market_dataset  # noqa: E402
from reidkit.training.loop import train  # noqa: E402
from reidkit.training.tasks.attributes import AttributeTask, AttributeTrainConfig  # noqa: E402
from reidkit.utils import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # attribute head biases start at the prior log-odds (attributes.prior_bias, the default) or at 0
    "gamma0": ["loss.metric_params.gamma=0"],
    "gamma1": ["loss.metric_params.gamma=1.0"],
    "gamma0_bias0": ["loss.metric_params.gamma=0", "attributes.prior_bias=false"],
    "gamma1_bias0": ["loss.metric_params.gamma=1.0", "attributes.prior_bias=false"],
    "baseline": ["attributes.weight=0", "loss.metric_params.gamma=0", "model.params.fusion_weight=0"],
}


def majority_accuracy(manifest: Path) -> dict[str, float]:
    """Accuracy per attribute of always predicting the training set's majority value (the trivial reference)."""
    ds = load_dataset(manifest)
    names = attribute_names(ds.train)
    train = attribute_matrix(ds.train, names, str(manifest))
    val = attribute_matrix(ds.query + ds.gallery, names, str(manifest))
    majority = train.mean(0) > 0.5
    acc = ((val > 0.5) == majority).mean(0) * 100.0
    return {**{n: float(a) for n, a in zip(names, acc)}, "mean": float(acc.mean())}


def run(name: str, overrides: list[str], manifest: Path, out: Path, epochs: int) -> dict:
    cfg = load_config(AttributeTrainConfig, ROOT / "configs/acrn_synth.yaml",
                      overrides + [f"optim.epochs={epochs}", "max_minutes=0"])
    start = time.perf_counter()
    summary = train(AttributeTask(cfg, manifest, show_progress=False), out / name, overwrite=True)
    seconds = time.perf_counter() - start
    last = [r for r in summary["log"] if "val" in r][-1]
    ips = [r["images_per_second"] for r in summary["log"] if "images_per_second" in r]
    return {"overrides": overrides, "seconds": round(seconds, 1), "train_images_per_second": float(np.median(ips)),
            "epoch": last["epoch"], "val_fused": last["val"], "val_reid": last["val_reid"],
            "attribute_accuracy": last["val_attributes"], "best": summary["best"]}


def markdown(result: dict) -> str:
    runs, majority = result["runs"], result["majority_accuracy"]
    lines = ["# ACRN on synthetic data with attributes", "",
             "No real attribute-labelled re-id data is at hand: these are SYNTHETIC identities "
             f"({result['data']}), with the generator's true attribute labels. Validation = held-out identities "
             "(query / gallery of the synthetic set). `bench/acrn_synth.py`, configs/acrn_synth.yaml "
             f"({result['epochs']} epochs, 128x64, EfficientNet-Lite0 ImageNet start, 2 CPU threads).", "",
             f"Load average before / after: {result['load_before']} / {result['load_after']} ({result['machine']}).",
             "", "| run | attribute loss | prior bias | gamma | fusion weight | fused rank-1 | fused mAP | "
             "ReID-only rank-1 | ReID-only mAP | mean attribute acc. | train img/s | minutes |", "|---" * 12 + "|"]
    for name, r in runs.items():
        o = " ".join(r["overrides"])
        wce = "no" if "attributes.weight=0" in o else "yes"
        gamma = "0" if "gamma=0" in o else "1"
        fusion = "0" if "fusion_weight=0" in o else "0.5"
        prior = "no" if "prior_bias=false" in o or wce == "no" else "yes"
        lines.append(f"| {name} | {wce} | {prior} | {gamma} | {fusion} | {r['val_fused']['rank1']:.1f} | "
                     f"{r['val_fused']['mAP']:.1f} | {r['val_reid']['rank1']:.1f} | {r['val_reid']['mAP']:.1f} | "
                     f"{r['attribute_accuracy']['mean']:.1f} | {r['train_images_per_second']:.0f} | "
                     f"{r['seconds'] / 60:.1f} |")
    names = [n for n in majority if n != "mean"]
    lines += ["", "Attribute accuracy (%, p > 0.5, validation images) against the majority-class predictor "
              "(most attributes are rare, so the trivial predictor is already high: compare against it):", "",
              "| attribute | majority | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for n in names + ["mean"]:
        lines.append(f"| {n} | {majority[n]:.1f} | "
                     + " | ".join(f"{r['attribute_accuracy'][n]:.1f}" for r in runs.values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (default: 8)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/attrs/bench", help="data and run folder")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), help="which runs (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = [round(x, 2) for x in os.getloadavg()]
    synth = SynthConfig(num_train_ids=150, num_test_ids=100, num_cameras=2, images_per_camera=4, seed=0)
    root = generate_market_dataset(args.work / "synth_attr", synth, show_progress=False, attributes=True)
    manifest = root / "attributes.csv"
    result = {"data": f"{synth.num_train_ids} training / {synth.num_test_ids} validation identities, "
                      f"{synth.num_cameras} cameras x {synth.images_per_camera} images, seed {synth.seed}",
              "epochs": args.epochs, "majority_accuracy": majority_accuracy(manifest), "runs": {}}
    previous = ROOT / "docs/benchmarks/acrn.json"
    if previous.is_file():  # runs not asked for this time keep their earlier results (same data and epochs)
        old = json.loads(previous.read_text())
        if old.get("data") == result["data"] and old.get("epochs") == args.epochs:
            result["runs"] = {k: v for k, v in old["runs"].items() if k not in args.runs}
    for name in args.runs:  # results are written after every run, so a stopped benchmark keeps the finished ones
        result["runs"][name] = run(name, RUNS[name], manifest, args.work, args.epochs)
        print(name, result["runs"][name]["val_fused"], result["runs"][name]["attribute_accuracy"]["mean"], flush=True)
        result.update(load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()],
                      machine=f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
        atomic_write_json(result, ROOT / "docs/benchmarks/acrn.json")
        atomic_write_text(markdown(result), ROOT / "docs/benchmarks/acrn.md")
    print(markdown(result))


if __name__ == "__main__":
    main()
