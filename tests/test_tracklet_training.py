"""The tracklet task end to end on tiny synthetic data: `reidkit train` routes a temporal config to it, clips come
from the right tracklets, checkpoints evaluate with `reidkit evaluate --tracklets`, image checkpoints start it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.cli.main import main
from reidkit.data.synth import SynthConfig, generate_market_dataset
from reidkit.models import build_model
from reidkit.models.temporal import pool_ragged

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cuhk03np_tracklet.yaml"
SMALL = ["model.pretrained=false", "data.height=64", "data.width=32", "optim.p=4", "optim.k=2", "eval_every=1",
         "data.validation=carve", "data.val_ids=4", "optim.pretrain_epochs=0", "optim.warmup_epochs=0",
         "num_threads=1", "flip_tta=false"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return generate_market_dataset(root / "s", SynthConfig(num_train_ids=12, num_test_ids=4, images_per_camera=5),
                                   show_progress=False)


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "t"
    assert main(["train", "--config", str(CONFIG), "--data", str(synth / "bounding_box_train"), "--out", str(out),
                 "--quiet", *SMALL, "optim.epochs=1"]) == 0
    return out


@pytest.mark.slow
def test_train_routes_the_tracklet_config_and_logs_tracklet_and_image_validation(trained):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["task"] == "tracklet" and summary["model"] == "temporal" and summary["epochs_done"] == 1
    rows = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert {"val", "val_avg", "val_image"} <= set(rows[-1])
    payload = torch.load(trained / "best.pt", weights_only=True)
    assert payload["model_cfg"]["temporal_pooling"] == "attention"
    assert any(k.startswith("attention.") for k in payload["model"])


def test_clips_come_from_the_sampled_tracklets(synth):
    from reidkit.config import load_config
    from reidkit.training.config import TrackletTrainConfig
    from reidkit.training.tasks.tracklet import TrackletTask

    cfg = load_config(TrackletTrainConfig, CONFIG, SMALL + ["data.validation=none", "attention_lr_mult=10"])
    task = TrackletTask(cfg, synth / "bounding_box_train", show_progress=False)
    task.setup()
    groups = task.optimizer(task.members[0]).param_groups
    head = {id(p) for p in task.models[0].attention.parameters()}
    assert [g["lr"] for g in groups] == [pytest.approx(cfg.optim.lr), pytest.approx(10 * cfg.optim.lr)]
    assert {id(p) for p in groups[1]["params"]} == head and not head & {id(p) for p in groups[0]["params"]}
    idx = next(iter(task.sampler.batches(0)))
    frames = task._clip_batch(idx, np.random.default_rng(0)).reshape(len(idx), cfg.data.clip_len)
    owner = np.searchsorted(task.offsets, frames, side="right") - 1  # tracklet of each frame, independently
    assert (owner == idx[:, None]).all()
    assert (task.train_labels[owner] == task.train_labels[idx][:, None]).all()


def test_eval_clip_forward_equals_ragged_pooling_of_frame_embeddings():
    torch.manual_seed(0)
    model = build_model("temporal", pretrained=False, input_size=(64, 32), num_classes=5).eval()
    torch.nn.init.normal_(model.attention.net[2].weight)  # non-uniform attention
    x = torch.rand(6, 3, 64, 32)
    with torch.no_grad():
        clip = model(x, clip_len=3)
        frames = model(x)
        pooled = pool_ragged(frames, torch.tensor([0, 3, 6]), "attention", model.frame_scores(frames))
    assert torch.allclose(clip, pooled, atol=1e-5)


@pytest.mark.slow
def test_evaluate_tracklets_cli_with_temporal_and_image_checkpoints(trained, synth, tmp_path, capsys):
    out = tmp_path / "ev.json"
    assert main(["evaluate", "--tracklets", "--model", str(trained / "best.pt"), "--data", str(synth), "--pooling",
                 "attention", "--tracklet-protocol", "pooled", "--quiet", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tracklets"] is True and report["pooling"] == "attention" and report["tracklet_protocol"] == "pooled"
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP", "num_queries", "cmc", "source", "metric"):
        assert key in report  # the image evaluation's keys
    assert report["num_queries"] == 8  # 4 test ids x 2 cameras; distractors are gallery only
    # an image checkpoint: built from the temporal run's frame encoder, then refused for learned attention
    from reidkit.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(trained / "best.pt")
    image = build_model("embedding", **{k: v for k, v in payload["model_cfg"].items()
                                        if k not in ("temporal_pooling", "attention_hidden")})
    image.load_state_dict({k.removeprefix("frame_model."): v for k, v in payload["model"].items()
                           if k.startswith("frame_model.")})
    cfg = {k: v for k, v in payload["model_cfg"].items() if k not in ("temporal_pooling", "attention_hidden")}
    save_checkpoint(tmp_path / "image.pt", model=image, model_name="embedding", model_cfg=cfg, epoch=1)
    assert main(["evaluate", "--tracklets", "--model", str(tmp_path / "image.pt"), "--data", str(synth), "--pooling",
                 "attention", "--quiet"]) == 2
    assert "no learned attention head" in capsys.readouterr().err
    # the same frame encoder with average pooling gives the same figures from either checkpoint
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for model, dest in ((trained / "best.pt", a), (tmp_path / "image.pt", b)):
        assert main(["evaluate", "--tracklets", "--model", str(model), "--data", str(synth), "--quiet", "--out",
                     str(dest)]) == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["mAP"] == pytest.approx(rb["mAP"]) and ra["cmc"] == pytest.approx(rb["cmc"])


@pytest.mark.slow
def test_init_from_an_image_checkpoint_loads_the_frame_encoder(trained, synth, tmp_path):
    from reidkit.checkpoint import init_weights_from

    model = build_model("temporal", pretrained=False, input_size=(64, 32), num_classes=3, temporal_pooling="avg")
    message = init_weights_from(model.frame_model, "embedding", trained / "best.pt", {1: 0, 2: 1, 3: 2})
    saved = torch.load(trained / "best.pt", weights_only=True)["model"]
    assert torch.equal(model.frame_model.backbone.state_dict()[next(iter(model.frame_model.backbone.state_dict()))],
                       saved["frame_model.backbone." + next(iter(model.frame_model.backbone.state_dict()))])
    assert "classifier re-initialised" in message


def test_tracklet_options_without_tracklets_are_refused(synth, capsys):
    assert main(["evaluate", "--model", "x.pt", "--data", str(synth), "--set-distance", "min"]) == 2
    assert "--set-distance applies to tracklet evaluation: add --tracklets" in capsys.readouterr().err


def test_image_verbs_accept_a_tracklet_checkpoint_through_its_frame_encoder(trained, synth, tmp_path):
    """extract / evaluate / search embed single images with a temporal checkpoint's frame encoder: the same
    features as that encoder saved on its own as an image checkpoint."""
    from reidkit.checkpoint import load_checkpoint, save_checkpoint
    from reidkit.inference.extractor import Extractor

    payload = load_checkpoint(trained / "best.pt")
    cfg = {k: v for k, v in payload["model_cfg"].items() if k not in ("temporal_pooling", "attention_hidden")}
    image = build_model("embedding", **cfg)
    image.load_state_dict({k.removeprefix("frame_model."): v for k, v in payload["model"].items()
                           if k.startswith("frame_model.")})
    save_checkpoint(tmp_path / "image.pt", model=image, model_name="embedding", model_cfg=cfg, epoch=1)
    paths = sorted((synth / "query").glob("*.jpg"))[:6]
    temporal = Extractor(trained / "best.pt", device="cpu").embed(paths)
    frames_only = Extractor(tmp_path / "image.pt", device="cpu").embed(paths)
    np.testing.assert_allclose(temporal, frames_only, atol=1e-5)
