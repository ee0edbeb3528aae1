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
