"""1:1 verification and calibration: metrics against hand computations, calibrators against independent fits,
the stored record, and the `verify` / `calibrate` verbs on good and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.analysis.calibration import (
    FORMAT,
    Calibrator,
    calibration_sidecar,
    fit_calibrator,
    load_calibration,
    random_negatives,
    store_calibration,
    threshold_for_far,
    validation_pairs,
)
from reidkit.checkpoint import load_checkpoint, save_checkpoint
from reidkit.cli.main import main
from reidkit.metrics.calibration import expected_calibration_error, tar_at_far, threshold_at_far

# ------------------------------------------------------------------------------------------------ metrics

def test_ece_on_a_hand_computed_toy_case():
    # bins of width 0.5: [0.1, 0.2] -> mean 0.15, observed 1/2: gap 0.35; [0.8, 0.9] -> mean 0.85, observed 1: 0.15
    probabilities, labels = [0.1, 0.2, 0.8, 0.9], [0, 1, 1, 1]
    assert expected_calibration_error(probabilities, labels, num_bins=2) == pytest.approx((2 * 0.35 + 2 * 0.15) / 4)
    assert expected_calibration_error([0.0, 1.0, 1.0], [0, 1, 1], num_bins=10) == pytest.approx(0.0)


def test_threshold_and_tar_at_far_against_a_naive_search():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(1.0, 1.0, 300), rng.normal(-1.0, 1.0, 2000)]
    labels = np.r_[np.ones(300), np.zeros(2000)].astype(int)
    for far in (0.01, 0.002, 0.1):
        # naive: the lowest candidate threshold (a score) whose false accept rate (score > t) is <= far
        candidates = sorted(set(scores.tolist()))
        naive = next(t for t in candidates if np.mean(scores[labels == 0] > t) <= far)
        assert threshold_at_far(scores, labels, far) == pytest.approx(naive)
        tar, t = tar_at_far(scores, labels, far)
        assert tar == pytest.approx(np.mean(scores[labels == 1] > naive))
        assert np.mean(scores[labels == 0] > t) <= far


def _newton_logistic(x: np.ndarray, y: np.ndarray, steps: int = 100) -> tuple[float, float]:
    """Unregularised logistic regression of y on (x, 1) by Newton's method: the hand reference for Platt."""
    design = np.c_[x, np.ones_like(x)]
    w = np.zeros(2)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-design @ w))
        hessian = design.T @ (design * (p * (1 - p))[:, None])
        w -= np.linalg.solve(hessian, design.T @ (p - y))
    return float(w[0]), float(w[1])


def test_platt_matches_a_hand_newton_fit():
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(0.7, 0.15, 400), rng.normal(0.3, 0.15, 400)]
    labels = np.r_[np.ones(400), np.zeros(400)]
    slope, intercept = _newton_logistic(scores, labels)
    cal = fit_calibrator(scores, labels, "platt")
    assert cal.slope == pytest.approx(slope, rel=1e-3) and cal.intercept == pytest.approx(intercept, rel=1e-3)
    probe = np.linspace(-0.5, 1.5, 9)
    np.testing.assert_allclose(cal.predict(probe), 1 / (1 + np.exp(-(slope * probe + intercept))), rtol=1e-3)
    assert cal.score_at(0.5) == pytest.approx(-intercept / slope, rel=1e-3)


def test_isotonic_matches_sklearn_and_survives_the_round_trip():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(2)
    scores = rng.normal(size=500)
    labels = (scores + rng.normal(scale=0.8, size=500) > 0).astype(int)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores, labels)
    stored = Calibrator.from_dict(json.loads(json.dumps(fit_calibrator(scores, labels, "isotonic").to_dict())))
    probe = np.linspace(-4, 4, 101)
    np.testing.assert_allclose(stored.predict(probe), reference.predict(probe), atol=1e-12)


def test_pairs_are_balanced_distinct_and_valid():
    pids = np.repeat(np.arange(10), 6)
    cams = np.tile([0, 0, 0, 1, 1, 1], 10)
    fit, far_pairs = validation_pairs(pids, cams, seed=0, num_negatives=500)
    assert fit.label.sum() == (1 - fit.label).sum() == 10 * 9  # 3 x 3 cross-camera positives per identity
    assert np.all((pids[fit.first] == pids[fit.second]) == (fit.label == 1))
    neg = far_pairs.label == 0
    assert neg.sum() == 500 and far_pairs.label.sum() == 90
    keys = set(zip(far_pairs.first[neg].tolist(), far_pairs.second[neg].tolist(), strict=True))
    assert len(keys) == 500  # distinct
    assert np.all(pids[far_pairs.first[neg]] != pids[far_pairs.second[neg]])
    assert np.all(cams[far_pairs.first[neg]] != cams[far_pairs.second[neg]])
    again = random_negatives(pids, cams, 500, np.random.default_rng(5))
    assert np.array_equal(again[0], random_negatives(pids, cams, 500, np.random.default_rng(5))[0])  # seeded


# ------------------------------------------------------------------------------------------------ storage

def _record(slope: float = 20.0, intercept: float = -12.0) -> dict:
    return {"format": FORMAT, "score": "cosine", "calibrator": {"method": "platt", "slope": slope,
                                                                  "intercept": intercept},
            "flip": False, "thresholds": {"0.01": 0.7, "0.001": 0.8, "0.0001": 0.9},
            "far_curve": {"far": [1e-3, 1e-2, 1e-1], "threshold": [0.8, 0.7, 0.5]},
            "default_threshold": 0.6, "pairs": {}, "metrics": {}}


def test_calibration_is_stored_in_the_checkpoint_without_touching_the_rest(small_checkpoint):
    before = load_checkpoint(small_checkpoint)
    store_calibration(small_checkpoint, _record())
    after = load_checkpoint(small_checkpoint)
    assert after["extra"]["calibration"] == _record()
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert load_calibration(small_checkpoint) == _record()
    assert not list(small_checkpoint.parent.glob(".*.tmp"))  # atomic: no temporary left behind


def test_exported_models_get_a_sidecar(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read here")
    assert load_calibration(model) is None
    assert store_calibration(model, _record()) == calibration_sidecar(model) == tmp_path / "model.calibration.json"
    assert load_calibration(model) == _record()


def test_far_interpolation_and_range():
    record = _record()
    assert threshold_for_far(record, 0.01) == 0.7
    assert threshold_for_far(record, 10 ** -2.5) == pytest.approx(0.75)  # halfway on log(FAR)
    with pytest.raises(Exception, match="outside the FAR range"):
        threshold_for_far(record, 1e-5)


# ------------------------------------------------------------------------------------------------ verbs

def _images(tiny_market: Path) -> tuple[Path, Path]:
    files = sorted((tiny_market / "bounding_box_train").glob("*.jpg"))
    return files[0], files[-1]


def test_verify_uncalibrated_says_so(tiny_market, small_checkpoint, capsys):
    a, b = _images(tiny_market)
    assert main(["verify", str(a), str(b), "--model", str(small_checkpoint), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"probability", "same", "threshold"} <= out.keys()
    assert out["probability"] is None and out["threshold"] == 0.5 and out["calibrated"] is False
    assert out["same"] == (out["score"] > 0.5)
    assert any("not calibrated" in note for note in out["notes"])
    assert main(["verify", str(a), str(b), "--checkpoint", str(small_checkpoint), "--far", "0.01"]) == 2
    assert "needs a calibrated model" in capsys.readouterr().err


def test_verify_identical_images_probability_near_one_and_said(tiny_market, small_checkpoint, tmp_path, capsys):
    store_calibration(small_checkpoint, _record())
    a, _ = _images(tiny_market)
    copy = tmp_path / "copy.jpg"
    shutil.copy(a, copy)
    assert main(["verify", str(a), str(copy), "--model", str(small_checkpoint)]) == 0
    text = capsys.readouterr().out
    assert "SAME person" in text and "identical" in text
    assert main(["verify", str(a), str(copy), "--model", str(small_checkpoint), "--json", "--far", "0.001"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["probability"] == pytest.approx(1 / (1 + np.exp(-(20 * 1.0 - 12))), abs=1e-4)  # cosine 1
    assert out["threshold"] == 0.8 and out["same"] is True


def test_verify_unreadable_image_names_the_file(tiny_market, small_checkpoint, tmp_path, capsys):
    a, _ = _images(tiny_market)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    assert main(["verify", str(a), str(broken), "--model", str(small_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "error:" in err and "Traceback" not in err


def test_calibrate_end_to_end_then_verify(tiny_market, small_checkpoint, tmp_path, capsys):
    out = tmp_path / "cal"
    assert main(["calibrate", "--model", str(small_checkpoint), "--data", str(tiny_market), "--out", str(out),
                 "--negatives", "300", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "FAR   0.01" in text and "stored in" in text
    record = load_calibration(small_checkpoint)
    pairs = record["pairs"]
    assert pairs["identities"] == 6 and pairs["fit_same"] == pairs["fit_different"] == 6 * 9
    # 36 images in 2 cameras: 18 x 18 cross-camera pairs minus 6 x 9 same-identity ones = 270 < 300 asked
    assert pairs["far_different"] == 270 and set(record["thresholds"]) == {"0.01", "0.001", "0.0001"}
    assert (out / "verification.png").stat().st_size > 0 and json.loads((out / "calibration.json").read_text())
    a, b = _images(tiny_market)
    assert main(["verify", str(a), str(b), "--model", str(small_checkpoint), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["calibrated"] and 0.0 <= result["probability"] <= 1.0


@pytest.fixture
def pair_checkpoint(tmp_path) -> Path:
    from reidkit.models import build_model

    torch.manual_seed(0)
    cfg = {"input_size": [64, 32], "dropout": 0.0}
    path = tmp_path / "pair.pt"
    save_checkpoint(path, model=build_model("idla", **cfg).eval(), model_name="idla", model_cfg=cfg, epoch=0)
    return path


def test_verify_with_a_pair_network(tiny_market, pair_checkpoint, capsys):
    a, b = _images(tiny_market)
    assert main(["verify", str(a), str(b), "--model", str(pair_checkpoint), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score_kind"] == "pair_log_odds" and out["threshold"] == 0.0
    assert out["probability"] == pytest.approx(1 / (1 + np.exp(-out["score"])))  # the uncalibrated softmax
