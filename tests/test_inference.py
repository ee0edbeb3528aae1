"""The one image decoder and in-memory inference, against independent references: PIL resizing by hand,
hand-computed pixel values, numpy formulas; and the clean failure of `reidkit export` without the [deploy] extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.data.images import decode_images, image_array, load_image_tensor
from reidkit.errors import DataError, ReIDError


def test_float_arrays_are_scaled_by_255_not_truncated():
    pixels = np.zeros((2, 1, 3))
    pixels[0, 0] = (0.2, 0.5, 1.0)
    out = image_array(pixels, (2, 1))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [51, 128, 255]  # round(0.2*255)=51, 127.5 -> 128


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 2, 3), 2.0), r"images\[3\]: float arrays must hold values in \[0, 1\]"),
    (np.zeros((4, 2)), r"images\[3\]: expected an HxWx3 RGB array, got shape \(4, 2\)"),
    (np.zeros((4, 2, 4), np.uint8), r"got shape \(4, 2, 4\)"),
    (np.full((4, 2, 3), 300), r"integer arrays must hold 0..255"),
    (torch.zeros(4, 2, 3), "expected a path, PIL image or HxWx3 uint8 array, got Tensor"),
])
def test_bad_arrays_are_refused_with_the_item_named(bad, message):
    with pytest.raises(ReIDError, match=message):
        image_array(bad, (4, 2), where="images[3]")


def test_decoder_matches_pil_for_paths_pil_images_and_arrays(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (40, 18, 3), dtype=np.uint8)
    Image.fromarray(raw).save(tmp_path / "a.png")
    expected = np.asarray(Image.fromarray(raw).resize((8, 16), Image.BILINEAR))  # PIL directly, (W, H)
    pixels = load_image_tensor([tmp_path / "a.png", Image.fromarray(raw), raw, raw.astype(np.int64)], (16, 8))
    assert pixels.shape == (4, 3, 16, 8) and pixels.dtype == torch.uint8
    for row in pixels:
        np.testing.assert_array_equal(row.permute(1, 2, 0).numpy(), expected)


def test_lenient_decoding_skips_unreadable_files_only(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    good = np.zeros((4, 2, 3), np.uint8)
    pixels, ok, bad = decode_images([good, str(tmp_path / "bad.jpg"), good], (4, 2))
    assert ok.tolist() == [True, False, True] and len(pixels) == 2
    assert bad[0][0] == str(tmp_path / "bad.jpg") and "cannot read image" in bad[0][1]
    with pytest.raises(DataError, match="1 unreadable image"):
        load_image_tensor([good, str(tmp_path / "bad.jpg")], (4, 2))


def test_extractor_embeds_arrays_like_the_model_on_pil_resized_pixels(small_checkpoint):
    from reidkit.inference import Extractor, embed_tensor

    ext = Extractor(small_checkpoint, device="cpu")  # 64x32 input
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (90, 40, 3), dtype=np.uint8) for _ in range(3)]
    resized = np.stack([np.asarray(Image.fromarray(c).resize((32, 64), Image.BILINEAR)) for c in crops])
    reference = embed_tensor(ext.model, torch.from_numpy(resized).permute(0, 3, 1, 2), mean=ext.mean, std=ext.std,
                             device=torch.device("cpu")).numpy()
    np.testing.assert_allclose(ext.embed(crops), reference, atol=1e-5)
    np.testing.assert_allclose(ext.embed([c / 255.0 for c in crops]), reference, atol=1e-5)  # 0..1: x 255, rounded


def test_array_backend_flip_sums_image_and_mirror_outputs():
    from reidkit.inference.backends import Preprocessing, _ArrayExtractor

    weights = np.random.default_rng(2).standard_normal((3 * 4 * 2, 5)).astype(np.float32)

    class Linear(_ArrayExtractor):
        backend = "test"

        def __init__(self, flip):  # no model file: a numpy linear map stands in for the runtime
            self.preprocessing, self.input_size, self.resize = Preprocessing((4, 2)), (4, 2), "stretch"
            self.batch_size, self.flip, self._dim = 2, flip, 5
            self.model_path = Path("linear.onnx")  # named in errors (e.g. NaN features)

        def _forward(self, batch):
            return batch.reshape(len(batch), -1) @ weights

    images = np.random.default_rng(3).integers(0, 256, (3, 3, 4, 2), dtype=np.uint8)
    x = images.astype(np.float32) / 255.0
    summed = x.reshape(3, -1) @ weights + x[..., ::-1].reshape(3, -1) @ weights
    np.testing.assert_allclose(Linear(True).embed_uint8(images), summed / np.linalg.norm(summed, axis=1,
                                                                                          keepdims=True), atol=1e-5)
    plain = x.reshape(3, -1) @ weights
    np.testing.assert_allclose(Linear(False).embed_uint8(images), plain / np.linalg.norm(plain, axis=1,
                                                                                          keepdims=True), atol=1e-5)


def test_export_without_onnx_names_the_package_and_the_install_command(small_checkpoint, monkeypatch, capsys):
    from reidkit.cli.main import main

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError, as when not installed
    out = small_checkpoint.with_suffix(".onnx")
    assert main(["export", "--model", str(small_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: export --format onnx needs the Python package 'onnx'")
    assert "pip install 'reidkit[deploy]'" in err and "Traceback" not in err
    assert not out.exists()
