"""Pose keypoints (reidkit.data.keypoints): derived points, fallback counting, the content-keyed cache, clear errors
for a missing model file or package, and the detection rate on real CUHK03-NP crops.

References are hand-computed numbers (the anthropometric upper-head formula, midpoints, the pad-resize
placement) and the lead's probe measurement for the real-data band (85.5% of 200 crops at presence 0.5).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from reidkit.data import keypoints as kpmod
from reidkit.data.keypoints import (
    CANONICAL_KEYPOINTS,
    PoseEstimator,
    derive_keypoints,
    glad_boxes,
    keypoints_or_fallback,
    mirror_boxes,
    pose_for_files,
    report_fallbacks,
    resized_keypoints,
)
from reidkit.errors import DataError, ModelError

HAS_POSE = importlib.util.find_spec("ai_edge_litert") is not None and importlib.util.find_spec("mediapipe") is not None
needs_pose = pytest.mark.skipif(not HAS_POSE, reason="pose extra (ai-edge-litert + mediapipe model file) missing")


@pytest.fixture(scope="module")
def estimator():
    if not HAS_POSE:
        pytest.skip("pose extra missing")
    return PoseEstimator()


def blazepose_landmarks() -> np.ndarray:
    """33 landmarks of one hand-placed figure: face points at y 0.10 (x 0.45..0.55), shoulders (0.40, 0.20) and
    (0.60, 0.24), everything else at (0.5, 0.5)."""
    lm = np.full((1, 33, 4), 0.5, dtype=np.float32)
    lm[0, 1:9, 0] = np.linspace(0.45, 0.55, 8)
    lm[0, 1:9, 1] = 0.10
    lm[0, 12, :2] = (0.40, 0.20)  # right shoulder
    lm[0, 11, :2] = (0.60, 0.24)  # left shoulder
    lm[0, 24, :2] = (0.42, 0.55)  # right hip
    lm[0, 23, :2] = (0.58, 0.57)  # left hip
    return lm


def test_derived_keypoints_by_hand():
    kp = derive_keypoints(blazepose_landmarks())[0]
    neck = np.array([0.50, 0.22])  # midpoint of the shoulders
    face = np.array([0.50, 0.10])  # mean of the eyes and ears
    np.testing.assert_allclose(kp[1], neck, atol=1e-6)
    np.testing.assert_allclose(kp[0], neck + 1.6 * (face - neck), atol=1e-6)  # (0.5, 0.028)
    np.testing.assert_allclose(kp[2], (0.40, 0.20))  # right shoulder = BlazePose 12
    np.testing.assert_allclose(kp[5], (0.60, 0.24))  # left shoulder = BlazePose 11
    np.testing.assert_allclose(kp[8], (0.42, 0.55))  # right hip = BlazePose 24
    np.testing.assert_allclose(kp[11], (0.58, 0.57))  # left hip = BlazePose 23


def test_fallback_gets_the_canonical_skeleton_and_is_counted():
    lm = np.repeat(blazepose_landmarks(), 3, axis=0)
    kp, found = keypoints_or_fallback(lm, np.array([0.9, 0.2, 0.5]), threshold=0.5)
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(kp[1], CANONICAL_KEYPOINTS)
    assert "pose found in 2 of 3 crops; 1 without a pose (33.3%)" in report_fallbacks(found, "train")


def test_mirror_and_pad_resize_by_hand():
    boxes = np.array([[[0.1, 0.2, 0.4, 0.9]]], dtype=np.float32)
    np.testing.assert_allclose(mirror_boxes(boxes), [[[0.6, 0.2, 0.9, 0.9]]])
    # a 100x50 (h x w) crop padded into 100x100: scale 1, 50 wide, left offset 25
    kp = np.array([[[0.0, 0.0], [1.0, 0.5]]], dtype=np.float32)
    out = resized_keypoints(kp, np.array([[100, 50]]), (100, 100), "pad")
    np.testing.assert_allclose(out, [[[0.25, 0.0], [0.75, 0.5]]])


# ------------------------------------------------------------------------------------------- real estimator

@needs_pose
def test_blank_image_has_no_pose_and_gets_counted_fallback_boxes(tmp_path, estimator):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 128), (128, 128, 128)).save(blank)
    pose = pose_for_files([blank], estimator=estimator, cache_dir=tmp_path / "cache", show_progress=False)
    assert pose.presence[0] < 0.5  # measured 0.25 for this grey crop between the black square padding
    kp, found = pose.keypoints(0.5)
    assert not found[0]
    np.testing.assert_array_equal(glad_boxes(kp), glad_boxes(CANONICAL_KEYPOINTS[None]))
    assert "0 of 1 crops; 1 without a pose" in report_fallbacks(found, "blank")


class CountingEstimator:
    """A stand-in estimator: landmarks encode the image's mean grey; fails after `fail_after` images."""

    tag = "fake-v1"

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def one(self, image):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        return np.full((33, 4), float(image.float().mean()) / 255, np.float32), 0.9


def _grey_images(folder, values):
    folder.mkdir()
    paths = []
    for i, v in enumerate(values):
        paths.append(folder / f"img{i}.png")
        Image.new("RGB", (8, 16), (v, v, v)).save(paths[-1])
    return paths


def test_cache_is_keyed_by_content_and_resumes_after_an_interruption(tmp_path, monkeypatch):
    monkeypatch.setattr(kpmod, "CHUNK", 2)
    paths = _grey_images(tmp_path / "a", [10, 20, 30, 40, 50])
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):  # stops in the middle of the third chunk
        pose_for_files(paths, estimator=CountingEstimator(fail_after=4), cache_dir=cache, show_progress=False)
    resumed = CountingEstimator()
    pose = pose_for_files(paths, estimator=resumed, cache_dir=cache, show_progress=False)
    assert resumed.calls == 1 and pose.computed == 1  # two complete chunks (4 images) were kept
    np.testing.assert_allclose(pose.landmarks[:, 0, 0], np.array([10, 20, 30, 40, 50]) / 255, atol=1e-6)
    # a renamed copy of the same files is found by content: nothing recomputed
    copy = tmp_path / "copy.png"
    shutil.copy(paths[2], copy)
    again = CountingEstimator()
    assert pose_for_files([copy], estimator=again, cache_dir=cache, show_progress=False).computed == 0
    assert again.calls == 0


# ------------------------------------------------------------------------------------------- bad input

def test_missing_model_file_names_it_and_the_fix(tmp_path):
    with pytest.raises(ModelError, match=r"nothing\.tflite: file not found.*pip install 'reidkit\[pose\]'"):
        PoseEstimator(tmp_path / "nothing.tflite")


def test_missing_mediapipe_names_the_package_and_the_fix(monkeypatch):
    monkeypatch.setattr(kpmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"mediapipe package is not installed.*--no-deps mediapipe==0\.10\.14"):
        kpmod.pose_model_path()


def test_missing_litert_names_the_package_and_the_fix(monkeypatch, tmp_path):
    model = tmp_path / "pose.tflite"
    model.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import -> ImportError
    with pytest.raises(ModelError, match=r"ai-edge-litert.*pip install 'reidkit\[pose\]'"):
        PoseEstimator(model)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg"):
        pose_for_files([bad], estimator=CountingEstimator(), cache_dir=tmp_path / "c", show_progress=False)


# ------------------------------------------------------------------------------------------- real data

@pytest.mark.shared
@needs_pose
def test_detection_rate_on_real_cuhk03_crops_is_in_a_sane_band(cuhk03_train, tmp_path, estimator):
    paths = sorted(cuhk03_train.glob("*.jpg"))[::367][:20]
    pose = pose_for_files(paths, estimator=estimator, cache_dir=tmp_path, show_progress=False)
    rate = float((pose.presence >= 0.5).mean())
    assert 0.6 <= rate <= 1.0  # the lead's probe: 85.5% of 200 crops; the full split: docs/benchmarks/pose.md
    _, found = pose.keypoints(0.5)
    kp = derive_keypoints(pose.landmarks[found])
    # body order on upright pedestrians: head above neck above hips above ankles (median over crops)
    assert np.median(kp[:, 0, 1]) < np.median(kp[:, 1, 1]) < np.median(kp[:, 8, 1]) < np.median(kp[:, 10, 1])
