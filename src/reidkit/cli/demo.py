"""`reidkit demo`: synthetic data -> train an embedding model on CPU -> evaluate -> report folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ..data import load_dataset
from ..data.images import load_image_tensor
from ..data.records import ReIDDataset, split_arrays
from ..data.synth import SynthConfig, generate_market_dataset
from ..inference.features import embed_tensor
from ..metrics import RankResult, compute_distance_matrix, evaluate_rank_full, plot_cmc, ranked_list_grid, summarize
from ..training.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from ..training.embedding import EmbeddingTrainer
from ..utils import atomic_write_json
from .options import add_device, add_minutes, add_quiet

# 140 training identities: 20 are carved out to choose best.pt on, so 120 train, as before the carve-out; the 60
# test identities are only ever used for the final report.
DEMO_SYNTH = SynthConfig(num_train_ids=140, num_test_ids=60, num_cameras=3, images_per_camera=3, seed=0)
DEMO_VAL_IDS = 20


def demo_config(seed: int, minutes: float, device: str) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(backbone="mobilenetv2", pretrained=True, pooling="gem"),
        data=DataConfig(validation="carve", val_ids=DEMO_VAL_IDS, height=128, width=64),
        optim=OptimConfig(epochs=30, p=16, k=4, lr=1e-3, warmup_epochs=2, pretrain_epochs=2),
        seed=seed, device=device, max_minutes=minutes, eval_every=5,
    )


def run_demo(out: str | Path, seed: int = 0, minutes: float = 0.0, device: str = "auto",
             show_progress: bool = True) -> dict:
    out = Path(out)
    started = time.perf_counter()
    synth = SynthConfig(**{**DEMO_SYNTH.__dict__, "seed": seed})
    data_root = generate_market_dataset(out / "data", synth, show_progress=show_progress)
    cfg = demo_config(seed, minutes, device)
    trainer = EmbeddingTrainer(cfg, out / "train", data_root, show_progress=show_progress)
    trainer.setup()
    test = load_dataset(data_root)
    test_images = [load_image_tensor([r.path for r in records], (cfg.data.height, cfg.data.width), cfg.data.resize,
                                     show_progress, desc=f"loading test {split} images")
                   for split, records in (("query", test.query), ("gallery", test.gallery))]
    _, before = _test_ranking(trainer, test, test_images)  # the network before any training step: the baseline
    untrained = summarize(before.cmc, before.mAP, before.mINP)
    result = trainer.fit(overwrite=True)  # the demo folder is the demo's own output: a re-run redoes it

    # Final weights on the test identities (best.pt was chosen on the validation ids: result["best"]).
    q_paths, q_pids, q_cams = split_arrays(test.query)
    g_paths, g_pids, g_cams = split_arrays(test.gallery)
    distmat, full = _test_ranking(trainer, test, test_images)
    trained = summarize(full.cmc, full.mAP, full.mINP)
    before_name = "untrained (ImageNet init)" if cfg.model.pretrained else "untrained"
    plot_cmc({before_name: before.cmc[:20], "trained": full.cmc[:20]}, out / "cmc.png",
             title="CMC on the synthetic test identities")
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(len(q_paths), size=min(8, len(q_paths)), replace=False))
    ranked_list_grid([q_paths[i] for i in shown], g_paths, distmat[shown], q_pids[shown], g_pids,
                     q_cams[shown], g_cams, out / "ranked_list.png", topk=10)
    multicamera = multicamera_demo(out, data_root, out / "train" / "best.pt", seed=seed, device=device,
                                   show_progress=show_progress)
    report = {
        "dataset": {"synthetic": synth.__dict__, "train_images": len(trainer.splits.train),
                    "validation_ids": DEMO_VAL_IDS, "query": len(q_paths), "gallery": len(g_paths)},
        "untrained": untrained,
        "trained": trained,
        "best_epoch": result["best"],
        "epochs_done": result["epochs_done"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "checkpoint": str(out / "train" / "best.pt"),
        "multicamera": multicamera,
    }
    atomic_write_json(report, out / "metrics.json")
    _print_report(report, out)
    return report


# The multi-camera section: 3 cameras x 20 s of video composited from the TEST identities' crops (never trained on),
# tracked with the demo's model. Boxes are the generator's ground truth served as public detections: the pedestrian
# detector was not trained on cartoon people (it misses most of them) and would take most of the time budget.
DEMO_VIDEO = dict(cameras=3, people=10, seconds=20.0, fps=10.0, width=480, height=270)
DEMO_THRESHOLD = 0.3  # cosine; the demo model's tracklets of one person sit well below it


def multicamera_demo(out: Path, data_root: Path, checkpoint: Path, seed: int = 0, device: str = "auto",
                     show_progress: bool = True, video: dict | None = None) -> dict:
    """synth-video from the test crops -> `track` (default detector) -> cross-camera IDF1 (TrackEval) and pictures:
    out/multicamera_frames.png (annotated frames of each camera) and out/multicamera_contact_sheet.png."""
    import shutil

    from ..data.mot import read_gt, read_mot, write_mot
    from ..data.synth_video import SynthVideoConfig, generate_synth_video
    from ..metrics.tracking import evaluate_multicamera
    from ..video.association import AssociationConfig
    from ..video.pipeline import TrackOptions, track

    started = time.perf_counter()
    cfg = SynthVideoConfig(**(video or DEMO_VIDEO), crops=str(data_root), seed=seed)
    videos = generate_synth_video(out / "video" / "cameras", cfg, overwrite=True, show_progress=show_progress)
    cameras = sorted(p for p in videos.iterdir() if (p / "img1").is_dir())
    for cam in cameras:  # public detections = the generator's exact boxes (see DEMO_VIDEO)
        boxes = read_gt(cam / "gt" / "gt.txt")
        boxes.ids[:] = -1
        (cam / "det").mkdir(exist_ok=True)
        write_mot(cam / "det" / "det.txt", boxes)
    run = out / "video" / "track"
    result = track([str(c) for c in cameras], run, model=checkpoint, device=device, overwrite=True, detector="public",
                   options=TrackOptions(association=AssociationConfig(threshold=DEMO_THRESHOLD)),
                   show_progress=show_progress)
    scores = evaluate_multicamera({c.name: read_gt(c / "gt" / "gt.txt") for c in cameras},
                                  {c.name: read_mot(run / c.name / "tracks.txt") for c in cameras})
    _annotated_frames([run / c.name / "annotated.mp4" for c in cameras], out / "multicamera_frames.png")
    if (run / "contact_sheet.png").is_file():
        shutil.copyfile(run / "contact_sheet.png", out / "multicamera_contact_sheet.png")
    combined = scores["combined"]
    return {"video": {k: v for k, v in cfg.__dict__.items() if k != "crops"}, "crops": "synthetic test identities",
            "cross_camera_IDF1": round(scores["cross_camera"]["IDF1"], 1), "IDF1": round(combined["IDF1"], 1),
            "MOTA": round(combined["MOTA"], 1), "HOTA": round(combined["HOTA"], 1),
            "identities_found": result.num_identities, "identities_true": cfg.people,
            "seconds": round(time.perf_counter() - started, 1), "run": str(run)}


def _annotated_frames(videos: list[Path], path: Path, per_video: int = 3) -> None:
    """One row per camera: `per_video` frames spread over its annotated video, side by side, in one PNG."""
    import av
    from PIL import Image

    rows = []
    for video in videos:
        if not video.is_file():
            continue
        with av.open(str(video)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        if frames:
            picks = np.linspace(len(frames) * 0.2, len(frames) * 0.9, per_video).astype(int)
            # a white gap after each frame: a box at a frame's edge must not look like it belongs to the next one
            gap = ((0, 4), (0, 4), (0, 0))
            rows.append(np.concatenate([np.pad(frames[min(i, len(frames) - 1)], gap, constant_values=255)
                                        for i in picks], axis=1))
    if rows:
        width = min(r.shape[1] for r in rows)
        image = Image.fromarray(np.concatenate([r[:, :width] for r in rows], axis=0))
        image.thumbnail((1440, 1440))
        from ..utils import atomic_path

        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")


def _test_ranking(trainer: EmbeddingTrainer, test: ReIDDataset,
                  images: list[torch.Tensor]) -> tuple[np.ndarray, RankResult]:
    """Cosine distances of the test query x gallery embeddings of the first model, and their ranking metrics."""
    _, q_pids, q_cams = split_arrays(test.query)
    _, g_pids, g_cams = split_arrays(test.gallery)
    kw = dict(mean=trainer.mean, std=trainer.std, device=trainer.device)
    query, gallery = (embed_tensor(trainer.models[0], x, **kw).numpy() for x in images)
    distmat = compute_distance_matrix(query, gallery, metric="cosine")
    return distmat, evaluate_rank_full(distmat, q_pids, g_pids, q_cams, g_cams)


def _print_report(report: dict, out: Path) -> None:
    print("\nreidkit demo — synthetic test identities (market protocol)")
    print(f"{'model':10s} {'R1':>6s} {'R5':>6s} {'R10':>6s} {'mAP':>6s} {'mINP':>6s}")
    for name in ("untrained", "trained"):
        m = report[name]
        print(f"{name:10s} {m['rank1']:6.1f} {m['rank5']:6.1f} {m['rank10']:6.1f} {m['mAP']:6.1f} {m['mINP']:6.1f}")
    best = report["best_epoch"]
    if best:
        print(f"best.pt: epoch {best['epoch']}, chosen on {report['dataset']['validation_ids']} validation ids "
              f"carved from the training ids (validation mAP {best['mAP']:.1f}); the rows above are the final "
              "weights on the test ids, which choose nothing")
    mc = report.get("multicamera")
    if mc:
        print(f"\nmulti-camera: {mc['video']['cameras']} synthetic cameras x {mc['video']['seconds']:g} s of the test "
              f"identities, default detector + this model: cross-camera IDF1 {mc['cross_camera_IDF1']}, per-camera "
              f"IDF1 {mc['IDF1']}, MOTA {mc['MOTA']}; {mc['identities_found']} identities found "
              f"({mc['identities_true']} true) in {mc['seconds']} s")
    print(f"\nreport written to {out}/: metrics.json, cmc.png, ranked_list.png, train/training_curves.png, "
          f"multicamera_frames.png, multicamera_contact_sheet.png, video/track/ ({report['wall_seconds']} s)")


def _demo_command(args: argparse.Namespace) -> None:
    from ..models.backbones.pretrained import require_imagenet_weights

    cfg = demo_config(args.seed, args.minutes, args.device)
    if cfg.model.pretrained:  # fail before generating data or creating the run folder
        require_imagenet_weights(cfg.model.backbone)
    run_demo(args.out, seed=args.seed, minutes=args.minutes, device=args.device, show_progress=not args.quiet)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="report folder (data, run, figures)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same report")
    add_minutes(p, default=0.0,
                help="training time cap in minutes (0 = none; a cap makes results depend on machine speed)")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_demo_command)
