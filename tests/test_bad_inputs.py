"""#21 leftovers: decompression bombs, and no raw traceback from any bad CLI input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.cli import main
from reidkit.data.images import read_image
from reidkit.errors import DataError


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares width x height (no real pixel data): the cheap decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def gallery(tmp_path) -> Path:
    folder = tmp_path / "gallery"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for pid in (1, 2):
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(folder / f"{pid:04d}_c1_01.png")
    return folder


# PIL's limit is 89_478_485 pixels: it warns (and would decode) up to twice that, and raises above.
@pytest.mark.parametrize("side", [10_000, 20_000], ids=["warning-range", "error-range"])
def test_read_image_refuses_a_bomb_naming_the_file(tmp_path, side):
    bomb = _png_declaring(tmp_path / "bomb.png", side, side)
    assert side * side > Image.MAX_IMAGE_PIXELS  # the premise: both sizes exceed PIL's limit
    with pytest.raises(DataError, match=r"bomb\.png.*decompression bomb"):
        read_image(bomb)


@pytest.mark.parametrize("side", [10_000, 20_000], ids=["warning-range", "error-range"])
def test_search_and_extract_with_a_bomb_exit_2_naming_it(tmp_path, gallery, small_checkpoint, capsys, side):
    model = ["--model", str(small_checkpoint), "--device", "cpu"]
    index = tmp_path / "index"
    assert main(["index", "build", "--index", str(index), "--images", str(gallery), *model, "--quiet"]) == 0
    bomb = _png_declaring(tmp_path / "bomb.png", side, side)
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--query", str(bomb), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "bomb.png" in err and "decompression bomb" in err and "Traceback" not in err

    market = tmp_path / "market"
    (market / "query").mkdir(parents=True)
    _png_declaring(market / "query" / "0001_c1s1_000001_00.png", side, side)
    for sub in ("bounding_box_train", "bounding_box_test"):
        (market / sub).mkdir()
        for png in gallery.iterdir():
            (market / sub / f"{png.stem[:4]}_c2s1_000001_00.png").write_bytes(png.read_bytes())
    code = main(["extract", *model, "--data", str(market), "--out", str(tmp_path / "f.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "0001_c1s1_000001_00.png" in err and "decompression bomb" in err
    assert "Traceback" not in err and not (tmp_path / "f.npz").exists()


def test_index_build_lists_a_bomb_as_unreadable_and_indexes_the_rest(tmp_path, gallery, small_checkpoint, capsys):
    _png_declaring(gallery / "0009_c1_01.png", 20_000, 20_000)
    index = tmp_path / "index"
    assert main(["index", "build", "--index", str(index), "--images", str(gallery), "--model",
                 str(small_checkpoint), "--device", "cpu"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "0009_c1_01.png" in text and "decompression bomb" in text
    assert main(["index", "info", "--index", str(index)]) == 0
    assert "2 items" in capsys.readouterr().out  # the two real images, counted by hand


# ------------------------------------------------------------------------------ checkpoints that do not fit

def _altered(small_checkpoint: Path, out: Path, change) -> Path:
    import torch

    payload = torch.load(small_checkpoint, weights_only=False)
    change(payload)
    torch.save(payload, out)
    return out


def _pair_checkpoint(tmp_path: Path) -> Path:
    from reidkit.checkpoint import save_checkpoint
    from reidkit.models import build_model

    path = tmp_path / "pair.pt"
    save_checkpoint(path, model=build_model("idla", input_size=(40, 24)), model_name="idla",
                    model_cfg={"input_size": [40, 24]}, epoch=1)
    return path


def _wider(payload: dict) -> None:  # the config says width 16, the weights were trained at width 8
    payload["model_cfg"] = dict(payload["model_cfg"], backbone_options={"width": 16})


def _drop_first_tensor(payload: dict) -> None:
    payload["model"].pop("backbone.features.0.weight")


@pytest.mark.parametrize(("change", "reason"), [(_wider, "size mismatch for backbone.features.0.weight"),
                                                (_drop_first_tensor, "Missing key(s)")], ids=["shape", "missing"])
def test_weights_not_matching_the_config_raise_model_error_naming_file(small_checkpoint, tmp_path, change, reason):
    from reidkit.checkpoint import model_from_checkpoint
    from reidkit.errors import ModelError

    bad = _altered(small_checkpoint, tmp_path / "bad.pt", change)
    with pytest.raises(ModelError) as info:
        model_from_checkpoint(bad)
    assert str(bad) in str(info.value) and "do not match" in str(info.value) and reason in str(info.value)


def test_pair_checkpoint_is_refused_by_the_extractor_and_accepted_as_pair(tmp_path):
    from reidkit.checkpoint import model_from_checkpoint
    from reidkit.errors import ModelError
    from reidkit.inference import Extractor

    pair = _pair_checkpoint(tmp_path)
    with pytest.raises(ModelError, match=r"pair\.pt.*'idla' is a pair-task model"):
        Extractor(pair, device="cpu")
    model, _ = model_from_checkpoint(pair, task="pair")  # the pair path still loads it
    assert type(model).__name__ != "EmbeddingModel"


# ------------------------------------------------------------------- the bad-input table: no raw tracebacks

def _nan(payload: dict) -> None:
    payload["model"]["backbone.features.0.weight"].fill_(float("nan"))


def _bad_inputs(tmp: Path, market: Path, ckpt: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, text the message must contain): the bad input of each case, built on tiny fixtures."""
    bomb = _png_declaring(tmp / "bomb.png", 20_000, 20_000)
    wide = _altered(ckpt, tmp / "wide.pt", _wider)
    missing = _altered(ckpt, tmp / "missing.pt", _drop_first_tensor)
    nan = _altered(ckpt, tmp / "nan.pt", _nan)
    pair = _pair_checkpoint(tmp)
    not_yaml = tmp / "list.yaml"
    not_yaml.write_text("- 1\n- 2\n")
    index, out = str(tmp / "index"), str(tmp / "f.npz")
    cpu = ["--device", "cpu"]

    def extract(model: Path) -> list[str]:
        return ["extract", "--model", str(model), "--data", str(market), "--out", out, *cpu]

    def build(model: Path) -> list[str]:
        return ["index", "build", "--index", index, "--images", str(market / "query"), "--model", str(model), *cpu]

    return {
        "extract-shape-mismatch": (extract(wide), "wide.pt"),
        "extract-missing-key": (extract(missing), "missing.pt"),
        "extract-nan-weights": (extract(nan), "nan.pt"),
        "extract-pair-network": (extract(pair), "pair.pt"),
        "index-pair-network": (build(pair), "pair.pt"),
        "index-shape-mismatch": (build(wide), "wide.pt"),
        "export-pair-network": (["export", "--model", str(pair), "--out", str(tmp / "p.onnx")], "pair.pt"),
        "export-opset-5": (["export", "--model", str(ckpt), "--out", str(tmp / "a.onnx"), "--opset", "5"],
                           "--opset 5"),
        "export-opset-99": (["export", "--model", str(ckpt), "--out", str(tmp / "b.onnx"), "--opset", "99"],
                            "--opset 99"),
        "export-opset-7-lacks-expand_as": (["export", "--model", str(ckpt), "--out", str(tmp / "c.onnx"), "--opset",
                                            "7"], "--opset 7: EmbeddingModel cannot be exported"),
        "search-bomb": (["search", "--index", index, "--query", str(bomb), *cpu], "bomb.png"),
        "search-missing-index": (["search", "--index", str(tmp / "nowhere"), "--query", str(bomb), *cpu],
                                 "nowhere"),
        "batch-size-0": (build(ckpt) + ["--batch-size", "0"], "--batch-size"),
        "unknown-device": (["extract", "--model", str(ckpt), "--data", str(market), "--out", out, "--device",
                            "tpu"], "tpu"),
        "resume-without-last": (["train", "--data", str(market), "--out", str(tmp / "run"), "--resume",
                                 "--quiet"], "last.pt"),
        "config-not-a-mapping": (["train", "--config", str(not_yaml), "--out", str(tmp / "run2")], "list.yaml"),
        "missing-data-folder": (extract(ckpt)[:4] + [str(tmp / "no-data"), "--out", out, *cpu], "no-data"),
    }


CASES = ["extract-shape-mismatch", "extract-missing-key", "extract-nan-weights", "extract-pair-network",
         "index-pair-network", "index-shape-mismatch", "export-pair-network", "export-opset-5", "export-opset-99",
         "export-opset-7-lacks-expand_as",
         "search-bomb", "search-missing-index", "batch-size-0", "unknown-device", "resume-without-last",
         "config-not-a-mapping", "missing-data-folder"]


@pytest.mark.parametrize("case", CASES)
def test_bad_cli_input_exits_2_with_a_message_naming_it_and_no_traceback(case, tmp_path, tiny_market,
                                                                         small_checkpoint, capsys):
    cases = _bad_inputs(tmp_path, tiny_market, small_checkpoint)
    assert sorted(cases) == sorted(CASES)  # the table and the parametrization stay in step
    if case == "search-bomb":  # needs a good index to search
        assert main(["index", "build", "--index", str(tmp_path / "index"), "--images", str(tiny_market / "query"),
                     "--model", str(small_checkpoint), "--device", "cpu", "--quiet"]) == 0
    argv, named = cases[case]
    capsys.readouterr()
    try:  # any other exception escapes main() and fails the test: that is exactly a raw traceback
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.onnx")) and not (tmp_path / "f.npz").exists()
