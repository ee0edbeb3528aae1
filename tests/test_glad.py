"""GLAD: the part-box formulas by hand, the box crop against plain slicing / block means, the four-stream
descriptor against a stream-by-stream computation, boxes that follow flipped and shifted pixels, the per-part
identity losses against a hand-written label-smoothed CE, and a short training run + Extractor.

The training tests use a stand-in pose estimator (`FakePose`: keypoints from the canonical skeleton, no pose for
a fixed subset of crops) so they do not depend on LiteRT's speed; test_spindle runs the real estimator through
the Extractor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from reidkit.checkpoint import model_from_checkpoint
from reidkit.config import load_config
from reidkit.data import keypoints as kpmod
from reidkit.data.images import read_image
from reidkit.data.keypoints import CANONICAL_KEYPOINTS, glad_boxes, keypoints_or_fallback
from reidkit.data.records import relabel
from reidkit.errors import ModelError
from reidkit.inference.extractor import Extractor
from reidkit.models import build_model
from reidkit.models.parts import crop_resize
from reidkit.training.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from reidkit.training.loop import Trainer
from reidkit.training.tasks.parts import PartsTask, flip_translate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ------------------------------------------------------------------------------------------- box formulas
def test_glad_boxes_by_hand():
    kp = CANONICAL_KEYPOINTS.copy()[None]
    kp[0, 0, 1], kp[0, 1, 1], kp[0, 8, 1], kp[0, 11, 1] = 0.05, 0.20, 0.50, 0.54  # upper head, neck, r/l hip
    boxes = glad_boxes(kp, alpha=0.04)[0]
    np.testing.assert_allclose(boxes[0], [0, 0.01, 1, 0.24], atol=1e-6)  # B^h  = [0, y_uh-a, 1, y_n+a]
    np.testing.assert_allclose(boxes[1], [0, 0.16, 1, 0.58], atol=1e-6)  # B^ub = [0, y_n-a, 1, max(hips)+a]
    np.testing.assert_allclose(boxes[2], [0, 0.46, 1, 1.00], atol=1e-6)  # B^lb = [0, min(hips)-a, 1, 1]


def test_glad_boxes_clip_to_the_crop_and_never_collapse():
    kp = CANONICAL_KEYPOINTS.copy()[None]
    kp[0, 0, 1], kp[0, 1, 1], kp[0, 8, 1], kp[0, 11, 1] = -0.10, 0.50, 0.30, 0.30  # hips above the neck: bad pose
    boxes = glad_boxes(kp, alpha=0.0)[0]
    np.testing.assert_allclose(boxes[0], [0, 0.0, 1, 0.5], atol=1e-6)  # clipped at the top
    np.testing.assert_allclose(boxes[1], [0, 0.375, 1, 0.425], atol=1e-6)  # inverted: 5% around its centre 0.4
    np.testing.assert_allclose(boxes[2], [0, 0.30, 1, 1.0], atol=1e-6)


# ------------------------------------------------------------------------------------------- crops
def test_crop_resize_equals_slicing_on_pixel_edges():
    maps = torch.randn(2, 3, 8, 6)
    boxes = torch.tensor([[[1 / 6, 2 / 8, 4 / 6, 6 / 8]], [[0, 0, 0.5, 0.5]]])
    crops = crop_resize(maps, boxes, (4, 3))
    torch.testing.assert_close(crops[0], maps[0, :, 2:6, 1:4])
    torch.testing.assert_close(crops[1], maps[1, :, 0:4, 0:3])


def test_crop_resize_halving_is_the_mean_of_2x2_blocks():
    maps = torch.randn(1, 2, 8, 6)
    crop = crop_resize(maps, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), (4, 3))[0]
    naive = torch.empty(2, 4, 3)
    for c in range(2):
        for i in range(4):
            for j in range(3):
                naive[c, i, j] = maps[0, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean()
    torch.testing.assert_close(crop, naive)


def tiny_glad(**kw):
    torch.manual_seed(0)
    return build_model("glad", backbone="simple_cnn", backbone_options={"width": 8}, pooling="avg", num_classes=5,
                       input_size=(64, 32), part_heights=(0.25, 0.5, 0.5), **kw)


def test_eval_descriptor_is_the_four_streams_each_normalised_and_concatenated():
    model = tiny_glad().eval()
    x = torch.randn(2, 3, 64, 32)
    # boxes on pixel rows 0-16, 16-48, 32-64 with the crop sizes 16 / 32 / 32: the crops are plain slices
    boxes = torch.tensor([[0, 0, 1, 0.25], [0, 0.25, 1, 0.75], [0, 0.5, 1, 1]]).expand(2, 3, 4)
    streams = [x, x[:, :, 0:16], x[:, :, 16:48], x[:, :, 32:64]]
    parts = []
    for i, image in enumerate(streams):
        pooled = model.backbone(image).mean(dim=(2, 3))
        parts.append(F.normalize(model.bottlenecks[i](pooled), dim=1))
    expected = F.normalize(torch.cat(parts, dim=1), dim=1)
    torch.testing.assert_close(model(x, boxes), expected)


def test_part_model_without_boxes_or_with_wrong_boxes_says_what_it_needs():
    model = tiny_glad().eval()
    with pytest.raises(ModelError, match="needs part boxes.*Extractor"):
        model(torch.randn(1, 3, 64, 32))
    with pytest.raises(ModelError, match=r"boxes must be \(N, 3, 4\)"):
        model(torch.randn(1, 3, 64, 32), torch.zeros(1, 7, 4))
    with pytest.raises(ModelError, match="part model.*explain"):
        model.embed(torch.randn(1, 8, 4, 2))


@pytest.mark.parametrize("seed", range(4))
def test_flip_and_shift_move_the_boxes_with_the_pixels(seed):
    h, w = 16, 8
    n = 6
    x = torch.zeros(n, 1, h, w)
    rows, cols = torch.randint(3, h - 3, (n,)), torch.randint(3, w - 3, (n,))
    x[torch.arange(n), 0, rows, cols] = 1.0
    boxes = torch.stack([cols / w, rows / h, (cols + 1) / w, (rows + 1) / h], dim=1).view(n, 1, 4)
    out, moved = flip_translate(x, boxes, flip=True, pad=2, generator=torch.Generator().manual_seed(seed))
    for i in range(n):
        r, c = divmod(int(out[i, 0].flatten().argmax()), w)
        assert out[i, 0].sum() == 1.0  # the pixel stayed inside (shift 2 < margin 3)
        torch.testing.assert_close(moved[i, 0], torch.tensor([c / w, r / h, (c + 1) / w, (r + 1) / h]))


# ------------------------------------------------------------------------------------------- training
class FakePose:
    """Stand-in estimator: the canonical skeleton (x shifted by the image's mean red), presence 0.1 for crops whose
    mean red byte is odd (no pose -> fallback), 0.9 otherwise."""

    tag = "fake-pose-v1"

    def __init__(self, *args, **kwargs):
        pass

    def one(self, image):
        red = int(image[0].float().mean())
        lm = np.zeros((33, 4), np.float32)
        lm[:, :2] = 0.5 + (red % 7) / 100.0
        lm[11, :2], lm[12, :2], lm[23, :2], lm[24, :2] = (0.6, 0.2), (0.4, 0.2), (0.58, 0.5), (0.42, 0.52)
        lm[1:9, 1] = 0.12
        return lm, 0.1 if red % 2 else 0.9

    def __call__(self, images):
        results = [self.one(im) for im in images]
        return np.stack([r[0] for r in results]), np.asarray([r[1] for r in results], np.float32)


@pytest.fixture(scope="module")
def fake_pose(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kpmod, "PoseEstimator", FakePose)
        mp.setenv("REIDKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield FakePose


def parts_config(name: str, **params) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(name=name, backbone="simple_cnn", pretrained=False, pooling="avg", params=params),
        data=DataConfig(validation="dataset", height=64, width=32),
        loss=LossConfig(),
        optim=OptimConfig(epochs=2, pretrain_epochs=1, p=4, k=2, lr=1e-3, warmup_epochs=0),
        num_threads=1, flip_tta=True, eval_every=1,
    )


def expected_found(paths) -> int:
    return sum(int(np.asarray(read_image(p))[..., 0].mean()) % 2 == 0 for p in paths)


@pytest.fixture(scope="module")
def glad_run(tiny_market, tmp_path_factory, fake_pose):
    cfg = parts_config("glad", part_heights=[0.25, 0.5, 0.5], backbone_options={"width": 8})
    task = PartsTask(cfg, tiny_market, show_progress=False)
    out = tmp_path_factory.mktemp("glad") / "run"
    summary = Trainer(task, out).fit()
    return task, out, summary


def _label_smoothed_ce(logits: np.ndarray, labels: list[int], epsilon: float) -> float:
    total = 0.0
    for row, label in zip(logits, labels):
        log_z = math.log(sum(math.exp(v) for v in row))
        total -= sum(((1 - epsilon) * (k == label) + epsilon / len(row)) * (row[k] - log_z) for k in range(len(row)))
    return total / len(labels)


def test_glad_training_run_logs_per_part_losses_counts_fallbacks_and_embeds(glad_run, tiny_market):
    task, out, summary = glad_run
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss_id" in r]
    assert {"loss_id", "loss_id_head", "loss_id_upper_body", "loss_id_lower_body"} <= set(train_rows[0])
    assert "loss_metric" in train_rows[-1] and "loss_metric" not in train_rows[0]  # triplet after pre-training
    paths = [r.path for r in task.splits.train]
    stats = summary["pose"]["train"]
    assert stats["crops"] == len(paths) and stats["pose_found"] == expected_found(paths)
    assert 0 < stats["pose_found"] < stats["crops"]  # the fixture has crops with and without a pose
    # inference through the Extractor: boxes from the (fake) pose of each input, flip TTA included
    ext = Extractor(out / "best.pt", device="cpu", flip=True)
    with pytest.warns(UserWarning, match="pose not found in .* fallback boxes"):
        feats = ext.embed(paths[:5])
    assert ext.model.box_fn.seen == 10 and 0 < ext.model.box_fn.found < 10  # 5 crops and their mirrors
    assert feats.shape == (5, ext.dim) and np.isfinite(feats).all()
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    model, _ = model_from_checkpoint(out / "best.pt")
    assert model.box_params == {"alpha": 0.04}


def test_each_part_stream_gets_the_identity_loss(glad_run):
    task = glad_run[0]
    torch.manual_seed(1)
    logits = [torch.randn(4, task.num_classes) for _ in range(4)]
    labels = torch.tensor([0, 1, 2, 1])
    out = {"logits": logits[0], "part_logits": torch.stack(logits[1:], dim=1), "features": torch.randn(4, 8)}
    parts = task._student_loss(out, labels, ranking=False)
    eps = task.cfg.loss.label_smooth
    for key, lg in zip(("id", "id_head", "id_upper_body", "id_lower_body"), logits):
        assert parts[key].item() == pytest.approx(_label_smoothed_ce(lg.numpy(), labels.tolist(), eps), rel=1e-5)


def test_training_boxes_are_the_glad_boxes_of_the_cached_keypoints(glad_run):
    task = glad_run[0]
    fake = FakePose()
    paths = [r.path for r in relabel(task.splits.train)[0]]
    lm, pr = fake([torch.from_numpy(np.array(read_image(p))).permute(2, 0, 1) for p in paths])
    kp, _ = keypoints_or_fallback(lm, pr, 0.5)
    np.testing.assert_allclose(task.train_boxes.numpy(), glad_boxes(kp, alpha=0.04), atol=1e-6)


# ------------------------------------------------------------------------------------------- config
def test_glad_config_is_the_cuhk03np_recipe_with_another_model():
    recipe = yaml.safe_load((CONFIGS / "cuhk03np_imagenet.yaml").read_text())
    glad = yaml.safe_load((CONFIGS / "glad_cuhk03np_cpu.yaml").read_text())
    assert glad["model"].pop("name") == "glad" and recipe["model"].pop("name") == "embedding"
    assert glad["model"].pop("params")["alpha"] == 0.04
    assert glad == recipe
    assert load_config(TrainConfig, CONFIGS / "glad_cuhk03np_cpu.yaml").model.params["part_heights"] == [0.25, 0.42,
                                                                                                          0.5]
