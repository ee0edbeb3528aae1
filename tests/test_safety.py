"""Safe loading (issue #21 item 1) and no silent NaN (item 4).

References are independent of reidkit's own code paths: torch's safe unpickler on its own (no allow-list), numpy's
RNG draws, hashlib over the file's bytes, a marker file that a malicious pickle would create, and hand-built
NaN arrays/tensors."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from reidkit.cli.main import main
from reidkit.errors import ModelError
from reidkit.inference.extractor import Extractor
from reidkit.models import build_model

SMALL_CFG = {"backbone": "simple_cnn", "pretrained": False, "num_classes": None, "input_size": (64, 32),
             "backbone_options": {"width": 8}}


class _RunsShell:
    """Unpickling this calls os.system: what a hostile "checkpoint" does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "reidkit-checkpoint-1", "model_name": "embedding", "model_cfg": SMALL_CFG,
                "model": {}, "payload": _RunsShell(f"touch {marker}")}, path)
    assert not marker.exists()
    return path, marker


@pytest.fixture
def gallery(tmp_path) -> Path:
    folder = tmp_path / "gallery"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for pid in (1, 2):
        for cam in (1, 2):
            pixels = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{pid:04d}_c{cam}_{cam:02d}.png")
    return folder


# ------------------------------------------------------------------------------------------ item 1: loading

def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(ModelError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    assert str(path) in str(err.value) and "not a plain reidkit checkpoint" in str(err.value)
    assert "posix.system" in str(err.value) or "os.system" in str(err.value)
    with pytest.raises(ModelError, match="not a plain reidkit checkpoint"):
        Extractor(path, device="cpu")  # the inference path goes through the same loader
    assert not marker.exists()


def test_malicious_pickle_via_cli_extract_exits_cleanly(tmp_path, tiny_market, capsys):
    path, marker = _malicious_checkpoint(tmp_path)
    code = main(["extract", "--model", str(path), "--data", str(tiny_market), "--out", str(tmp_path / "f.npz"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert str(path) in err and "not a plain reidkit checkpoint" in err and "Traceback" not in err


def test_new_checkpoints_need_no_allow_list(tmp_path):
    """torch's own safe unpickler, with no reidkit allow-list in force, reads a freshly saved checkpoint."""
    path = tmp_path / "new.pt"
    save_checkpoint(path, model=build_model("embedding", **SMALL_CFG), model_name="embedding", model_cfg=SMALL_CFG,
                    epoch=3, metrics={"rank1": 0.5})
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    payload = torch.load(path, weights_only=True)
    assert payload["epoch"] == 3 and isinstance(payload["rng"]["numpy"][1], list)


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.random_sample()), float(torch.rand(1))


def test_rng_state_round_trips_for_new_and_old_layouts(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached Gaussian is part of numpy's state too
    state = rng_state()
    old_numpy = np.random.get_state()  # how checkpoints before the safe loader stored it: with an ndarray
    expected = _draws()
    for numpy_state in (state["numpy"], old_numpy):
        path = tmp_path / "rng.pt"
        torch.save({"format": "reidkit-checkpoint-1", "rng": {**state, "numpy": numpy_state}}, path)
        random.seed(9), np.random.seed(9), torch.manual_seed(9)
        set_rng_state(load_checkpoint(path)["rng"])
        assert _draws() == expected


def test_allow_list_admits_the_old_numpy_state_and_nothing_else(tmp_path):
    path = tmp_path / "other_numpy.pt"
    torch.save({"format": "reidkit-checkpoint-1", "x": np.random.RandomState(0)}, path)  # a numpy object, not an array
    with pytest.raises(ModelError, match="not a plain reidkit checkpoint"):
        load_checkpoint(path)
    path = tmp_path / "float_array.pt"
    torch.save({"format": "reidkit-checkpoint-1", "x": np.zeros(3, np.float64)}, path)  # dtype class not allowed
    with pytest.raises(ModelError, match="not a plain reidkit checkpoint"):
        load_checkpoint(path)


def _cli_index(tmp_path: Path, gallery: Path, model: Path) -> Path:
    index = tmp_path / "idx"
    assert main(["index", "build", "--index", str(index), "--images", str(gallery), "--model", str(model),
                 "--quiet", "--device", "cpu"]) == 0
    return index


def test_search_follows_the_recorded_model_only_when_its_digest_matches(tmp_path, gallery, small_checkpoint,
                                                                       capsys):
    index = _cli_index(tmp_path, gallery, small_checkpoint)
    query = next(gallery.iterdir())
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--query", str(query), "--device", "cpu", "--top", "1"]) == 0
    err = capsys.readouterr().err
    assert f"loading model {small_checkpoint.resolve()} recorded in index" in err
    recorded = json.loads((index / "index.json").read_text())["extractor"]["sha256"]
    assert recorded == hashlib.sha256(small_checkpoint.read_bytes()).hexdigest()[:len(recorded)]

    # tampered index: the recorded path now names a hostile file; its digest is not the recorded one
    evil, marker = _malicious_checkpoint(tmp_path)
    manifest = json.loads((index / "index.json").read_text())
    manifest["extractor"]["path"] = str(evil)
    (index / "index.json").write_text(json.dumps(manifest))
    code = main(["search", "--index", str(index), "--query", str(query), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert str(evil) in err and "SHA-256" in err and "--model" in err and "Traceback" not in err

    # the same refusal when the model file itself was replaced after the build
    manifest["extractor"]["path"] = str(small_checkpoint.resolve())
    (index / "index.json").write_text(json.dumps(manifest))
    torch.manual_seed(5)
    save_checkpoint(small_checkpoint, model=build_model("embedding", **SMALL_CFG), model_name="embedding",
                    model_cfg=SMALL_CFG, epoch=0)
    assert main(["search", "--index", str(index), "--query", str(query), "--device", "cpu"]) == 2
    assert "no longer matches" in capsys.readouterr().err
    # the user's own choice is honoured
    assert main(["search", "--index", str(index), "--query", str(query), "--device", "cpu",
                 "--model", str(small_checkpoint)]) == 0


def test_recorded_model_without_digest_is_not_loaded(tmp_path, gallery, small_checkpoint, capsys):
    index = _cli_index(tmp_path, gallery, small_checkpoint)
    manifest = json.loads((index / "index.json").read_text())
    del manifest["extractor"]["sha256"]
    (index / "index.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--query", str(next(gallery.iterdir())), "--device", "cpu"]) == 2
    assert "without its SHA-256" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- item 4: NaN

def _nan_checkpoint(small_checkpoint: Path) -> tuple[Path, str]:
    payload = torch.load(small_checkpoint, weights_only=True)
    names = [k for k, v in payload["model"].items() if v.is_floating_point()]
    bad = names[len(names) // 2]  # not the first one: the message must name the first *bad* tensor
    payload["model"][bad] = payload["model"][bad].clone().fill_(float("nan"))
    path = small_checkpoint.with_name("nan.pt")
    torch.save(payload, path)
    return path, bad


def test_nan_weights_are_refused_at_load_naming_file_and_tensor(small_checkpoint, tmp_path, tiny_market, capsys):
    path, bad = _nan_checkpoint(small_checkpoint)
    with pytest.raises(ModelError) as err:
        Extractor(path, device="cpu")
    assert str(path) in str(err.value) and repr(bad) in str(err.value)
    code = main(["extract", "--model", str(path), "--data", str(tiny_market), "--out", str(tmp_path / "f.npz"),
                 "--device", "cpu"])
    message = capsys.readouterr().err
    assert code == 2 and str(path) in message and bad in message and not (tmp_path / "f.npz").exists()


def test_inf_weights_are_refused_too(small_checkpoint):
    payload = torch.load(small_checkpoint, weights_only=True)
    first = next(k for k, v in payload["model"].items() if v.is_floating_point())
    payload["model"][first].view(-1)[0] = float("inf")
    torch.save(payload, small_checkpoint)
    with pytest.raises(ModelError, match=first):
        Extractor(small_checkpoint, device="cpu")


def test_nan_features_never_reach_an_index(small_checkpoint, gallery, tmp_path, monkeypatch):
    from reidkit.inference import extractor as extractor_module
    from reidkit.inference.backends import TorchExtractor
    from reidkit.search import GalleryIndex

    ext = TorchExtractor(small_checkpoint, device="cpu")
    dim = ext.dim
    real = extractor_module.embed_tensor

    def half_nan(*args, **kwargs):  # a model that emits NaN for some inputs despite finite weights
        out = real(*args, **kwargs).clone()
        out[-1, 0] = float("nan")
        return out

    monkeypatch.setattr(extractor_module, "embed_tensor", half_nan)
    with pytest.raises(ModelError, match=f"model {small_checkpoint}: 1 of 4 feature vectors"):
        GalleryIndex.build(tmp_path / "idx", ext, sorted(str(p) for p in gallery.iterdir()))
    assert not (tmp_path / "idx" / "index.json").exists()
    monkeypatch.setattr(extractor_module, "embed_tensor", real)
    index, _ = GalleryIndex.build(tmp_path / "idx", ext, sorted(str(p) for p in gallery.iterdir()))
    count = index.count
    bad = np.ones((2, dim), np.float32)
    bad[1, 3] = np.inf
    with pytest.raises(ModelError, match="add_features"):
        index.add_features(bad)
    assert GalleryIndex.load(tmp_path / "idx").count == count
    with pytest.raises(ModelError, match="query features"):
        index.search(np.full((1, dim), np.nan, np.float32))


def test_export_treats_a_nan_difference_as_failure(small_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from reidkit.export import onnx as export_onnx

    real = export_onnx._verify

    def nan_output(*args, **kwargs):
        out = np.array(real(*args, **kwargs), copy=True)
        out[0, 0] = np.nan
        return out

    monkeypatch.setattr(export_onnx, "_verify", nan_output)
    out = tmp_path / "model.onnx"
    with pytest.raises(ModelError, match="nan"):
        export_onnx.export_model(small_checkpoint, out=out, num_verify=4, batch_size=3)
    assert not out.exists()
