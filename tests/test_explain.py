"""explain: the top dimensions against products computed by hand from the Extractor's features, the heat maps,
the picture, pair networks and refused inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.analysis import explain
from reidkit.analysis.explain import top_dimensions
from reidkit.checkpoint import save_checkpoint
from reidkit.cli.main import main
from reidkit.errors import ModelError
from reidkit.inference import Extractor


def _pair_of_images(tiny_market: Path) -> tuple[Path, Path]:
    files = sorted((tiny_market / "bounding_box_train").glob("*.jpg"))
    return files[0], files[1]


def test_top_dimensions_are_the_largest_hand_products(tiny_market, small_checkpoint):
    a, b = _pair_of_images(tiny_market)
    result = explain(a, b, model=small_checkpoint)
    features = Extractor(small_checkpoint, device="cpu").embed([a, b])  # L2-normalised, independent path
    products = features[0].astype(np.float64) * features[1]
    by_hand = sorted(range(products.size), key=lambda d: -products[d])[:5]
    assert result.dimensions == by_hand
    np.testing.assert_allclose(result.contributions, products[by_hand], rtol=1e-4, atol=1e-6)
    assert result.score == pytest.approx(float(features[0] @ features[1]), abs=1e-5)
    h, w = 64, 32
    assert result.maps_a.shape == result.maps_b.shape == (5, h, w)
    assert result.maps_a.min() >= 0 and max(result.maps_a.max(), result.maps_b.max()) == pytest.approx(1.0)
    assert result.probability is None and any("not calibrated" in n for n in result.notes)


def test_top_dimensions_helper_on_a_toy_vector():
    a = np.array([3.0, 0.0, 4.0, 0.0])  # normalised: 0.6, 0, 0.8, 0
    b = np.array([1.0, 1.0, 1.0, 1.0])  # normalised: 0.5 each
    dims, products = top_dimensions(a, b, k=2)
    assert dims.tolist() == [2, 0] and products.tolist() == pytest.approx([0.4, 0.3])


def test_explain_verb_writes_the_picture(tiny_market, small_checkpoint, tmp_path, capsys):
    a, b = _pair_of_images(tiny_market)
    out = tmp_path / "why.png"
    assert main(["explain", str(a), str(b), "--model", str(small_checkpoint), "--out", str(out)]) == 0
    assert "top dimensions" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.width > 400 and picture.height > 300


def test_explain_pair_network_grad_cam(tiny_market, tmp_path):
    from reidkit.models import build_model

    torch.manual_seed(0)
    cfg = {"input_size": [64, 32], "dropout": 0.0}
    path = tmp_path / "pair.pt"
    save_checkpoint(path, model=build_model("idla", **cfg).eval(), model_name="idla", model_cfg=cfg, epoch=0)
    a, b = _pair_of_images(tiny_market)
    result = explain(a, b, model=path, out=tmp_path / "pair.png")
    assert result.kind == "pair" and result.dimensions == []
    assert result.maps_a.shape == result.maps_b.shape == (1, 64, 32)
    assert result.probability == pytest.approx(1 / (1 + np.exp(-result.score)))
    assert (tmp_path / "pair.png").stat().st_size > 0


def test_explain_refuses_exported_models_and_unreadable_images(tiny_market, small_checkpoint, tmp_path, capsys):
    a, _ = _pair_of_images(tiny_market)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ModelError, match="needs a reidkit PyTorch checkpoint"):
        explain(a, a, model=onnx)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    assert main(["explain", str(a), str(broken), "--model", str(small_checkpoint), "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "broken.png" in capsys.readouterr().err
