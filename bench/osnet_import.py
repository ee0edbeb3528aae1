"""Intel OSNet-AIN start point: the imported PyTorch model against onnxruntime / OpenVINO, and its CPU speed.

    nohup nice -n 10 .venv/bin/python bench/osnet_import.py > runs/osnet/bench.log 2>&1 &

Parts (all by default; `--parts accuracy speed`):
  accuracy: the CUHK03-NP validation carve (150 identities of ../shared's bounding_box_train, split seed 0: one
            query per camera per identity, the rest gallery), cosine distance, no flip, no re-ranking:
            reidkit's PyTorch OSNet-AIN x0.5 with the imported 0267 weights (at 256x128 and, with the learned
            pooling kernel resampled, 192x96 / 128x64), onnxruntime on the same ONNX file, OpenVINO f32 on 0277.
            Also the max abs difference between the PyTorch and onnxruntime embeddings of every crop.
  speed:    images/s of inference (eval, batch 64) and of a training step (batch 64, forward + CE + backward +
            Adam step) at 256x128, 192x96 and 128x64, torch with 2 threads; EfficientNet-Lite0 (the 60-minute
            recipe's backbone) as the reference row.
Writes docs/benchmarks/osnet_import.json and .md (with the load average before/after each part).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CUHK03_TRAIN = SHARED / "datasets/cuhk03np-detected/bounding_box_train"
OV_0277 = SHARED / "models/openvino/person-reidentification-retail-0277/person-reidentification-retail-0277.xml"
OUT_JSON = ROOT / "docs/benchmarks/osnet_import.json"
OUT_MD = ROOT / "docs/benchmarks/osnet_import.md"
SIZES = ((256, 128), (192, 96), (128, 64))
THREADS = 2


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def osnet_model(num_classes: int | None = None, size: tuple[int, int] = (256, 128)) -> torch.nn.Module:
    from reidkit.models import build_model

    return build_model("embedding", backbone="osnet_ain_x0_5", pretrained=True, pooling="avg",
                       num_classes=num_classes, input_size=size)


def scores(q: np.ndarray, g: np.ndarray, val) -> dict:
    from reidkit.metrics import evaluate_rank_full, summarize

    q_pids = np.array([r.pid for r in val.query])
    q_cams = np.array([r.camid for r in val.query])
    g_pids = np.array([r.pid for r in val.gallery])
    g_cams = np.array([r.camid for r in val.gallery])
    full = evaluate_rank_full(1.0 - q @ g.T, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    return summarize(full.cmc, full.mAP, full.mINP)


def accuracy() -> dict:
    from reidkit.data import carve_validation_records, load_image_folder
    from reidkit.data.images import load_image_tensor
    from reidkit.inference import build_extractor
    from reidkit.inference.backends import OnnxExtractor
    from reidkit.inference.features import embed_tensor
    from reidkit.models.backbones.intel_import import vendored_weights

    val = carve_validation_records(load_image_folder(CUHK03_TRAIN).train, 150, seed=0)
    paths = [r.path for r in val.query] + [r.path for r in val.gallery]
    nq = len(val.query)
    before = load()
    rows, diff = [], None
    ort_feats = None
    for size in SIZES:
        images = load_image_tensor(paths, size)
        model = osnet_model(size=size).eval()
        t0 = time.perf_counter()
        feats = embed_tensor(model, images, mean=model.input_mean, std=model.input_std,
                             device=torch.device("cpu"), batch_size=64).numpy()
        seconds = time.perf_counter() - t0
        rows.append({"model": "reidkit OSNet-AIN x0.5 (imported 0267)", "runtime": "torch", "size": list(size),
                     **scores(feats[:nq], feats[nq:], val), "images_per_s": len(paths) / seconds})
        print(rows[-1], flush=True)
        if size == (256, 128):
            ext = OnnxExtractor(vendored_weights("osnet_ain_x0_5"), batch_size=64, threads=THREADS)
            t0 = time.perf_counter()
            ort_feats = ext.embed_uint8(images)
            seconds = time.perf_counter() - t0
            rows.append({"model": "Intel 0267 ONNX (same file)", "runtime": "onnxruntime", "size": list(size),
                         **scores(ort_feats[:nq], ort_feats[nq:], val), "images_per_s": len(paths) / seconds})
            print(rows[-1], flush=True)
            diff = float(np.abs(feats - ort_feats).max())
            if OV_0277.is_file():
                ov = build_extractor(OV_0277, batch_size=64, threads=THREADS)
                t0 = time.perf_counter()
                ov_feats = ov.embed_uint8(images)
                seconds = time.perf_counter() - t0
                rows.append({"model": "Intel 0277 (OSNet-AIN x1.0) IR", "runtime": "openvino f32",
                             "size": list(size), **scores(ov_feats[:nq], ov_feats[nq:], val),
                             "images_per_s": len(paths) / seconds})
                print(rows[-1], flush=True)
    return {"queries": nq, "gallery": len(val.gallery), "identities": len({r.pid for r in val.query}),
            "max_abs_diff_torch_vs_onnxruntime": diff, "rows": rows, "load": f"{before} -> {load()}"}


def ir_accuracy() -> dict:
    """Intel 0277 (OSNet-AIN x1.0, OpenVINO IR, BatchNorm folded) imported into PyTorch vs OpenVINO f32."""
    from reidkit.data import carve_validation_records, load_image_folder
    from reidkit.data.images import load_image_tensor
    from reidkit.inference import build_extractor
    from reidkit.inference.features import embed_tensor
    from reidkit.models import build_model

    val = carve_validation_records(load_image_folder(CUHK03_TRAIN).train, 150, seed=0)
    paths = [r.path for r in val.query] + [r.path for r in val.gallery]
    nq = len(val.query)
    before = load()
    images = load_image_tensor(paths, (256, 128))
    model = build_model("embedding", backbone="osnet_ain_x1_0", pretrained=str(OV_0277), pooling="avg").eval()
    t0 = time.perf_counter()
    feats = embed_tensor(model, images, mean=model.input_mean, std=model.input_std, device=torch.device("cpu"),
                         batch_size=64).numpy()
    seconds = time.perf_counter() - t0
    ov_feats = build_extractor(OV_0277, batch_size=64, threads=THREADS).embed_uint8(images)
    row = {"model": "reidkit OSNet-AIN x1.0 (imported 0277 IR)", "runtime": "torch", "size": [256, 128],
           **scores(feats[:nq], feats[nq:], val), "images_per_s": len(paths) / seconds}
    print(row, flush=True)
    return {"row": row, "max_abs_diff_torch_vs_openvino": float(np.abs(feats - ov_feats).max()),
            "load": f"{before} -> {load()}"}


def finetune(run: Path = ROOT / "runs/osnet_ft") -> dict | None:
    """The validation figures of the short fine-tune sanity run (its log.jsonl), if present."""
    log = run / "log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {"run": str(run.relative_to(ROOT)), "epochs": rows[-1].get("epoch"), "last": rows[-1]}


def _timed(step, repeats: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def time_model(model: torch.nn.Module, size: tuple[int, int], batch: int, repeats: int,
               gen: torch.Generator) -> tuple[float, float]:
    """Seconds per training step and per inference batch."""
    x = torch.randn(batch, 3, *size, generator=gen)
    labels = torch.randint(0, 617, (batch,), generator=gen)
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3.5e-4)

    def train_step() -> None:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], labels)
        optim.zero_grad()
        loss.backward()
        optim.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    return _timed(train_step, repeats), _timed(infer, repeats)


def speed(batch: int = 32, repeats: int = 1) -> dict:
    from reidkit.models import build_model

    before = load()
    rows = []
    builders = {  # name -> (builder, sizes)
        "osnet_ain_x0_5 (0267 import)": (lambda size: osnet_model(num_classes=617, size=size), SIZES),
        "osnet_ain_x1_0 (0277 import)": (lambda size: build_model(
            "embedding", backbone="osnet_ain_x1_0", pretrained=False, pooling="avg", num_classes=617,
            input_size=size), SIZES[:2]),
        "efficientnet_lite0 (60-min recipe)": (lambda size: build_model(
            "embedding", backbone="efficientnet_lite0", pretrained=True, last_stride=1, num_classes=617,
            input_size=size), SIZES[1:2]),
    }
    gen = torch.Generator().manual_seed(0)
    for name, (build, sizes) in builders.items():
        for size in sizes:
            train_s, infer_s = time_model(build(size), size, batch, repeats, gen)
            rows.append({"model": name, "size": list(size), "batch": batch,
                         "train_images_per_s": batch / train_s, "infer_images_per_s": batch / infer_s,
                         "load": load()})
            print(rows[-1], flush=True)
    return {"threads": THREADS, "rows": rows, "load": f"{before} -> {load()}"}


def write_markdown(result: dict) -> None:
    lines = ["# Intel OSNet-AIN start point (lever 1 of issue 25)", "",
             "Generated by `bench/osnet_import.py` (" + result["when"] + "). Method and discussion: "
             "docs/models.md, section *OSNet-AIN (Intel start point)*.", ""]
    acc = result.get("accuracy")
    if acc:
        lines += [f"## Off the shelf on the CUHK03-NP validation carve ({acc['identities']} identities, "
                  f"{acc['queries']} queries, {acc['gallery']} gallery; cosine, no flip, no re-ranking)", "",
                  "Max abs difference of the L2-normalised embeddings, PyTorch import vs onnxruntime, over all "
                  f"{acc['queries'] + acc['gallery']} crops at 256x128: "
                  f"**{acc['max_abs_diff_torch_vs_onnxruntime']:.2e}**. Load average {acc['load']}.", "",
                  "| model | runtime | input HxW | rank-1 | rank-5 | mAP | mINP | images/s (2 threads) |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        ir = result.get("ir")
        for r in acc["rows"] + ([ir["row"]] if ir else []):
            lines.append(f"| {r['model']} | {r['runtime']} | {r['size'][0]}x{r['size'][1]} | {r['rank1']:.1f} | "
                         f"{r['rank5']:.1f} | {r['mAP']:.1f} | {r['mINP']:.1f} | {r['images_per_s']:.1f} |")
        lines.append("")
        if ir:
            lines += ["The 0277 IR imported into PyTorch against OpenVINO f32 on the same crops: max abs difference "
                      f"**{ir['max_abs_diff_torch_vs_openvino']:.2e}** (load {ir['load']}).", ""]
    spd = result.get("speed")
    if spd:
        lines += [f"## CPU speed (torch, {spd['threads']} threads, batch {spd['rows'][0]['batch']}, under nice; "
                  f"load {spd['load']})", "",
                  "Training step = forward + CE (no label smoothing) + backward + Adam step on random inputs, "
                  "NCHW (the trainer uses channels-last).", "",
                  "| model | input HxW | training images/s | inference images/s | load (1/5/15 min) |",
                  "| --- | --- | ---: | ---: | --- |"]
        for r in spd["rows"]:
            lines.append(f"| {r['model']} | {r['size'][0]}x{r['size'][1]} | {r['train_images_per_s']:.2f} | "
                         f"{r['infer_images_per_s']:.2f} | {r['load']} |")
        lines.append("")
    ft = result.get("finetune")
    if ft:
        val = ft["last"].get("val", {})
        shown = ", ".join(f"{k} {v:.1f}" for k, v in val.items() if isinstance(v, (int, float)))
        last = ft["last"]
        lines += ["## Fine-tune sanity check (not the recipe)", "",
                  f"`{ft['run']}`: configs/cuhk03np_osnet.yaml (0267 start, 256x128) for {ft['epochs']} epoch "
                  "on 160 of "
                  "the 617 training identities (1,547 images; 10 P x K batches of 64), cosine from lr 2e-4 to 0, "
                  "validated without flip on the same 150-identity carve (made by `reidkit split`, seed 0): "
                  f"{shown} ({last.get('epoch_seconds', 0):.0f} s of training at "
                  f"{last.get('images_per_second', 0):.2f} images/s on the loaded box). Off the shelf: 48.3 / 48.3.",
                  ""]
    ft = result.get("finetune_x1")
    if ft:
        last = ft["last"]
        val = last.get("val", {})
        shown = ", ".join(f"{k} {v:.1f}" for k, v in val.items() if isinstance(v, (int, float)))
        lines += [f"The same check from the 0277 start (`{ft['run']}`, configs/cuhk03np_osnet_x1.yaml, BatchNorms "
                  f"recalibrated on the first batch): {shown} ({last.get('epoch_seconds', 0):.0f} s at "
                  f"{last.get('images_per_second', 0):.2f} images/s). Off the shelf (OpenVINO): 61.7 / 60.4.", ""]
    OUT_MD.write_text("\n".join(lines))


def main() -> int:
    from reidkit.utils import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ["accuracy", "ir", "speed", "finetune"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts,
                        help="what to measure (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    result = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
    if "accuracy" in args.parts:
        if not CUHK03_TRAIN.is_dir():
            print(f"{CUHK03_TRAIN} not found: skipping accuracy", file=sys.stderr)
        else:
            result["accuracy"] = accuracy()
    if "ir" in args.parts and OV_0277.is_file():
        result["ir"] = ir_accuracy()
    if "speed" in args.parts:
        result["speed"] = speed()
    if "finetune" in args.parts:
        result["finetune"] = finetune()
        result["finetune_x1"] = finetune(ROOT / "runs/osnet_x1_ft")
    result["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # parts may run as separate processes: merge with what they wrote meanwhile
    latest = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
    fresh = [*args.parts, "when"] + (["finetune_x1"] if "finetune" in args.parts else [])
    result = {**latest, **{k: v for k, v in result.items() if k in fresh}}
    atomic_write_json(result, OUT_JSON)
    write_markdown(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
