"""SpindleNet-style model: region boxes of a hand-made skeleton, the element-wise-max fusion tree against a naive
loop, the three-stage backbone split against the whole backbone, a short training run, and the Extractor with the
REAL pose estimator (boxes computed from the pose of each input, flip included).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from reidkit.config import load_config
from reidkit.data import keypoints as kpmod
from reidkit.data.keypoints import CANONICAL_KEYPOINTS, SPINDLE_REGIONS, PoseBoxes, spindle_boxes
from reidkit.data.keypoints import PoseEstimator as RealPoseEstimator
from reidkit.errors import ModelError
from reidkit.inference.extractor import Extractor
from reidkit.models import build_backbone, build_model
from reidkit.models.parts import run_stage, stage_plan
from reidkit.models.spindle import FUSION_TREE, REGIONS, tree_fusion
from reidkit.training.config import TrainConfig
from reidkit.training.loop import Trainer
from reidkit.training.tasks.parts import PartsTask
from test_glad import CONFIGS, expected_found, fake_pose, parts_config  # noqa: F401  (fake_pose: a fixture)

HAS_POSE = importlib.util.find_spec("ai_edge_litert") is not None and importlib.util.find_spec("mediapipe") is not None


# ------------------------------------------------------------------------------------------- regions
def hand_skeleton() -> np.ndarray:
    """14 keypoints (x, y) of an upright figure, numbers chosen so the boxes are easy to compute by hand."""
    return np.array([[[0.50, 0.05], [0.50, 0.20], [0.35, 0.20], [0.30, 0.35], [0.28, 0.48], [0.65, 0.20],
                      [0.70, 0.35], [0.72, 0.48], [0.40, 0.50], [0.40, 0.70], [0.40, 0.92], [0.60, 0.50],
                      [0.62, 0.70], [0.64, 0.95]]], dtype=np.float32)


def test_spindle_regions_by_hand():
    boxes = dict(zip(SPINDLE_REGIONS, spindle_boxes(hand_skeleton(), margin=0.1, aspect=0.5)[0]))
    # bounding box of the group's keypoints, widened by 0.1 (x) and 0.05 (y), clipped to [0, 1]
    expected = {
        "head_shoulder": [0.25, 0.00, 0.75, 0.25],  # upper head, neck, shoulders (top clipped)
        "upper_body": [0.25, 0.15, 0.75, 0.55],  # neck, shoulders, hips
        "lower_body": [0.30, 0.45, 0.74, 1.00],  # hips, knees, ankles (bottom clipped)
        "right_arm": [0.18, 0.15, 0.45, 0.53],
        "left_arm": [0.55, 0.15, 0.82, 0.53],
        "right_leg": [0.30, 0.45, 0.50, 0.97],
        "left_leg": [0.50, 0.45, 0.74, 1.00],
    }
    for name, box in expected.items():
        np.testing.assert_allclose(boxes[name], box, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------------- fusion
def naive_fusion(features: dict[str, torch.Tensor], units: nn.ModuleDict) -> torch.Tensor:
    values = {k: v.tolist() for k, v in features.items()}
    for name, inputs in FUSION_TREE:
        rows = len(values[inputs[0]])
        maxed = [[max(values[i][r][d] for i in inputs) for d in range(len(values[inputs[0]][r]))]
                 for r in range(rows)]
        linear = units[name][0]
        w, b = linear.weight.tolist(), linear.bias.tolist()
        values[name] = [[max(0.0, sum(w[o][d] * m[d] for d in range(len(m))) + b[o]) for o in range(len(w))]
                        for m in maxed]
    return torch.tensor(values[FUSION_TREE[-1][0]])


def test_tree_fusion_equals_a_naive_loop():
    torch.manual_seed(0)
    dim = 5
    units = nn.ModuleDict({name: nn.Sequential(nn.Linear(dim, dim), nn.ReLU()) for name, _ in FUSION_TREE})
    features = {r: torch.randn(3, dim) for r in REGIONS}
    torch.testing.assert_close(tree_fusion(features, units), naive_fusion(features, units), rtol=1e-5, atol=1e-6)


def test_fusion_is_symmetric_in_the_two_arms_and_the_two_legs():
    torch.manual_seed(0)
    units = nn.ModuleDict({name: nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for name, _ in FUSION_TREE})
    f = {r: torch.randn(2, 4) for r in REGIONS}
    swapped = {**f, "right_arm": f["left_arm"], "left_arm": f["right_arm"], "right_leg": f["left_leg"],
               "left_leg": f["right_leg"]}
    torch.testing.assert_close(tree_fusion(f, units), tree_fusion(swapped, units))


# ------------------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("name,options", [("simple_cnn", {"width": 8}), ("efficientnet_lite0", {"last_stride": 1}),
                                          ("mobilenetv2", {}), ("resnet50", {})])
def test_three_stages_in_a_row_are_the_backbone(name, options):
    torch.manual_seed(0)
    net = build_backbone(name, **options).eval()
    x = torch.randn(1, 3, 64, 32)
    plan = stage_plan(net)
    with torch.no_grad():
        stage1 = run_stage(net, plan, 1, x)
        stage2 = run_stage(net, plan, 2, stage1)
        torch.testing.assert_close(run_stage(net, plan, 3, stage2), net(x))
    assert stage1.shape[2] == 2 * stage2.shape[2]  # macro regions are cut from a map twice as fine as micro ones


def test_unsupported_backbone_is_named():
    with pytest.raises(ModelError, match="OSNet.*not supported"):
        build_model("spindle", backbone="osnet_x0_25", input_size=(64, 32))


# ------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def spindle_run(tiny_market, tmp_path_factory, fake_pose):  # noqa: F811
    cfg = parts_config("spindle", backbone_options={"width": 8}, region_dim=16)
    cfg.optim.epochs = 1
    task = PartsTask(cfg, tiny_market, show_progress=False)
    out = tmp_path_factory.mktemp("spindle") / "run"
    return task, out, Trainer(task, out).fit()


def test_spindle_training_run(spindle_run):
    task, out, summary = spindle_run
    paths = [r.path for r in task.splits.train]
    assert summary["pose"]["train"]["pose_found"] == expected_found(paths)
    assert (out / "best.pt").is_file() and task.train_boxes.shape == (len(paths), 7, 4)


@pytest.mark.skipif(not HAS_POSE, reason="pose extra missing")
def test_extractor_computes_boxes_with_the_real_pose_estimator(spindle_run, tmp_path, monkeypatch):
    task, out, _ = spindle_run
    monkeypatch.setenv("REIDKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(kpmod, "PoseEstimator", RealPoseEstimator)  # the module's runs used the stand-in
    paths = [r.path for r in task.splits.query[:2]]
    ext = Extractor(out / "best.pt", device="cpu", flip=True)
    assert isinstance(ext.model.box_fn, PoseBoxes)
    feats = ext.embed(paths)
    assert feats.shape == (2, ext.dim) and np.isfinite(feats).all()
    assert ext.model.box_fn.seen == 4  # two images and their mirrors


def test_spindle_config_is_the_cuhk03np_recipe_with_another_model():
    recipe = yaml.safe_load((CONFIGS / "cuhk03np_imagenet.yaml").read_text())
    spindle = yaml.safe_load((CONFIGS / "spindle_cuhk03np_cpu.yaml").read_text())
    assert spindle["model"].pop("name") == "spindle" and recipe["model"].pop("name") == "embedding"
    assert spindle["model"].pop("params")["region_dim"] == 256
    assert spindle == recipe
    assert load_config(TrainConfig, CONFIGS / "spindle_cuhk03np_cpu.yaml").model.name == "spindle"


def test_canonical_regions_are_inside_the_crop():
    boxes = spindle_boxes(CANONICAL_KEYPOINTS[None])[0]
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert all(x2 > x1 and y2 > y1 for x1, y1, x2, y2 in boxes)
