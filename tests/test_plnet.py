"""PL-Net: channel peaks, their clustering into parts, part boxes and ROI pooling against naive loops and
scikit-learn's KMeans on hand-made feature maps; the model's outputs; the plnet config trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from reidkit.config import load_config
from reidkit.errors import ConfigError, ModelError
from reidkit.models import build_model
from reidkit.models.plnet import cluster_channels, part_boxes, peak_positions, roi_pool
from reidkit.training.tasks import task_for_model
from reidkit.training.tasks.plnet import PLNetTask, PLNetTrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _planted_maps(n=5, h=12, w=4, seed=0):
    """12 channels: 0-3 peak near the top, 4-7 in the middle, 8-11 near the bottom (rows and columns jitter per
    image); the rest of each map is small noise."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, 12, h, w)).astype(np.float32) * 0.1
    centres = {0: 1, 1: 5, 2: 9}
    peaks = np.zeros((n, 12, 2), np.int64)
    for i in range(n):
        for c in range(12):
            row = centres[c // 4] + rng.integers(0, 2)
            col = rng.integers(1, 3)
            maps[i, c, row, col] = 1.0 + rng.random()
            peaks[i, c] = (row, col)
    return torch.tensor(maps), peaks


def test_peak_positions_against_a_naive_loop():
    maps = torch.randn(3, 7, 5, 4)
    expected = np.zeros((3, 7, 2), np.int64)
    for i in range(3):
        for c in range(7):
            best = None
            for r in range(5):
                for q in range(4):
                    if best is None or maps[i, c, r, q] > maps[i, c, best[0], best[1]]:
                        best = (r, q)
            expected[i, c] = best
    np.testing.assert_array_equal(peak_positions(maps).numpy(), expected)


def test_channels_cluster_into_the_planted_parts_top_to_bottom():
    maps, peaks = _planted_maps()
    np.testing.assert_array_equal(peak_positions(maps).numpy(), peaks)
    assignment = cluster_channels(peak_positions(maps), 12, 4, parts=3).numpy()
    np.testing.assert_array_equal(assignment, [0] * 4 + [1] * 4 + [2] * 4)
    # the same partition as scikit-learn's KMeans on points built by hand: per channel, its mean (row/11, col/3)
    descriptors = np.array([[sum(peaks[i, c, 0] for i in range(len(peaks))) / len(peaks) / 11,
                             sum(peaks[i, c, 1] for i in range(len(peaks))) / len(peaks) / 3] for c in range(12)])
    reference = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(descriptors)
    assert {tuple(np.flatnonzero(reference == k)) for k in range(3)} == {
        tuple(np.flatnonzero(assignment == k)) for k in range(3)}


def test_part_boxes_against_a_naive_loop():
    rng = np.random.default_rng(1)
    peaks = torch.tensor(rng.integers(0, [9, 5], size=(4, 10, 2)))
    assignment = torch.tensor([0, 1, 0, 1, 1, 0, 2, 0, 1, 1])  # part 3 has no channel: the whole map
    boxes = part_boxes(peaks, assignment, parts=4, height=9, width=5, quantile=0.2).numpy()
    for i in range(4):
        for k in range(4):
            members = [c for c in range(10) if assignment[c] == k]
            if not members:
                assert list(boxes[i, k]) == [0, 8, 0, 4]
                continue
            rows = [int(peaks[i, c, 0]) for c in members]
            cols = [int(peaks[i, c, 1]) for c in members]
            expected = [np.floor(np.quantile(rows, 0.2)), np.ceil(np.quantile(rows, 0.8)),
                        np.floor(np.quantile(cols, 0.2)), np.ceil(np.quantile(cols, 0.8))]
            assert list(boxes[i, k]) == expected


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_roi_pool_against_a_naive_loop(mode):
    fm = torch.randn(2, 3, 6, 4)
    boxes = torch.tensor([[[0, 2, 0, 1], [3, 5, 1, 3]], [[1, 1, 2, 2], [0, 5, 0, 3]]])
    pooled = roi_pool(fm, boxes, mode)
    for i in range(2):
        for k in range(2):
            r0, r1, c0, c1 = boxes[i, k].tolist()
            for c in range(3):
                cells = [float(fm[i, c, r, q]) for r in range(r0, r1 + 1) for q in range(c0, c1 + 1)]
                expected = max(cells) if mode == "max" else sum(cells) / len(cells)
                assert float(pooled[i, k, c]) == pytest.approx(expected, abs=1e-6)


def test_plnet_model_outputs():
    model = build_model("plnet", backbone="simple_cnn", parts=3, part_dim=8, num_classes=5, input_size=(64, 32))
    x = torch.randn(4, 3, 64, 32)
    with pytest.raises(ModelError, match="fit_parts"):
        model(x)
    with torch.no_grad():
        model.fit_parts(model.backbone(x))
    assert set(model.part_assignment.tolist()) <= {0, 1, 2}
    out = model.train()(x)
    assert out["part_features"].shape == (4, 3, 8) and out["part_logits"].shape == (4, 3, 5)
    emb = model.eval()(x)
    assert emb.shape == (4, model.embedding_dim + 3 * 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    with pytest.raises(ModelError, match="box_quantile"):
        build_model("plnet", backbone="simple_cnn", box_quantile=0.5)


@pytest.mark.slow
def test_plnet_config_trains_two_epochs(tmp_path):
    """configs/plnet_cuhk03np_cpu.yaml as written (but a small backbone, tiny images and synthetic data)."""
    from reidkit.data.synth import SynthConfig, generate_market_dataset
    from reidkit.training.loop import train

    assert task_for_model("plnet") is PLNetTask
    root = generate_market_dataset(tmp_path / "synth", SynthConfig(num_train_ids=6, num_test_ids=3,
                                                                   images_per_camera=2), show_progress=False)
    cfg = load_config(PLNetTrainConfig, CONFIGS / "plnet_cuhk03np_cpu.yaml",
                      ["optim.epochs=2", "optim.pretrain_epochs=1", "optim.warmup_epochs=0", "optim.p=3", "optim.k=2",
                       "model.pretrained=false", "model.backbone=simple_cnn", "eval_every=1", "data.height=64",
                       "data.width=32", "part_images=8", "flip_tta=false", "max_minutes=0"])
    assert cfg.model.params["parts"] == 6
    summary = train(PLNetTask(cfg, root, show_progress=False), tmp_path / "run")
    assert summary["epochs_done"] == 2
    assert {"loss_part", "loss_metric", "loss_id"} <= set(summary["log"][-1])
    assert _extractor_map(tmp_path / "run" / "best.pt", root) == pytest.approx(summary["best"]["mAP"], abs=1e-3)
    with pytest.raises(ConfigError, match="part_weight"):
        PLNetTask(load_config(PLNetTrainConfig, None, ["part_weight=-1"]), root)


def test_plnet_config_is_the_recipe_with_only_the_model_changed():
    import yaml

    recipe = yaml.safe_load((CONFIGS / "cuhk03np_imagenet.yaml").read_text())
    plnet = yaml.safe_load((CONFIGS / "plnet_cuhk03np_cpu.yaml").read_text())
    assert plnet["model"].pop("name") == "plnet" and recipe["model"].pop("name") == "embedding"
    assert plnet["model"].pop("params") == {"parts": 6, "part_dim": 256, "part_pool": "max", "box_quantile": 0.25}
    assert (plnet.pop("part_weight"), plnet.pop("part_images")) == (1.0, 256)
    assert plnet == recipe


def _extractor_map(checkpoint, root) -> float:
    """Validation mAP through the inference path (Extractor on the files, cosine, reidkit.metrics): the number the
    trainer logged for this checkpoint, reached by another route."""
    from reidkit.data import load_dataset
    from reidkit.data.records import split_arrays
    from reidkit.distance import compute_distance_matrix
    from reidkit.inference import Extractor
    from reidkit.metrics import evaluate_rank

    data, ext = load_dataset(root), Extractor(checkpoint)
    (qp, qi, qc), (gp, gi, gc) = split_arrays(data.query), split_arrays(data.gallery)
    dist = compute_distance_matrix(ext.embed(list(qp)), ext.embed(list(gp)), metric="cosine")
    return 100 * float(evaluate_rank(dist, qi, gi, qc, gc)[1])
