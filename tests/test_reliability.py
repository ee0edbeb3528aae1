"""#21 items 2 and 6: the shared extractor refuses a bad --batch-size before anything is written, concurrent
`index add` runs both land, and nothing the loaders skip or distort passes without a word. References are hand
counts, the files' bytes before and after, and the crops each process was given."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.cli.main import main
from reidkit.data import load_image_folder, load_manifest
from reidkit.errors import DataError, ModelError, ReIDError
from reidkit.inference.backends import build_extractor
from reidkit.inference.extractor import Extractor
from reidkit.search import GalleryIndex

CLI = "import sys; from reidkit.cli.main import main; sys.exit(main(sys.argv[1:]))"
# The same CLI with the window between reading the latest version and committing widened to 1.5 s, so two
# unserialised writers would both read version N and one of the two batches would be lost.
SLOW_COMMIT_CLI = ("import sys, time; from reidkit.search.index import GalleryIndex as G; commit = G._commit; "
                   "G._commit = lambda self, snap: (time.sleep(1.5), commit(self, snap))[1]; " + CLI)


def _images(folder: Path, pids: tuple[int, ...], seed: int) -> list[Path]:
    """Two Market-named 32x16 PNGs (cameras 1 and 2) per identity."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for pid in pids:
        for cam in (1, 2):
            path = folder / f"{pid:04d}_c{cam}_{seed:02d}.png"
            Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(path)
            paths.append(path)
    return paths


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- item 2: batch size

@pytest.mark.parametrize("value", ["-1", "0"])
def test_bad_batch_size_exits_2_naming_the_option_and_overwrite_keeps_the_index(tmp_path, small_checkpoint,
                                                                                capsys, value):
    images = _images(tmp_path / "gallery", (1, 2), seed=1)
    index = tmp_path / "idx"
    common = ["--index", str(index), "--data", str(images[0].parent), "--model", str(small_checkpoint),
              "--device", "cpu", "--quiet"]
    assert main(["index", "build", *common]) == 0
    before = _snapshot(index)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["index", "build", *common, "--overwrite", "--batch-size", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and "must be >= 1" in err
    assert _snapshot(index) == before  # byte for byte: nothing was committed
    assert GalleryIndex.load(index).count == len(images)


def test_library_extractors_refuse_a_batch_size_below_one(small_checkpoint):
    for batch_size in (0, -1):
        with pytest.raises(ModelError, match=rf"batch_size={batch_size}: must be >= 1"):
            Extractor(small_checkpoint, device="cpu", batch_size=batch_size)
        with pytest.raises(ModelError, match=rf"batch_size={batch_size}: must be >= 1"):
            build_extractor(small_checkpoint, backend="torch", batch_size=batch_size, device="cpu")


# ------------------------------------------------------------------------- item 2: concurrent index add

def test_two_concurrent_index_add_processes_both_land(tmp_path, small_checkpoint):
    first = _images(tmp_path / "first", (1,), seed=1)
    batches = [_images(tmp_path / name, pids, seed) for name, pids, seed in (("a", (2, 3), 2), ("b", (4, 5), 3))]
    index = tmp_path / "idx"
    model = ["--model", str(small_checkpoint), "--device", "cpu", "--quiet"]
    assert main(["index", "build", "--index", str(index), "--data", str(first[0].parent), *model]) == 0
    procs = [subprocess.Popen([sys.executable, "-c", SLOW_COMMIT_CLI, "index", "add", "--index", str(index), "--data",
                               str(batch[0].parent), *model], stderr=subprocess.PIPE, text=True)
             for batch in batches]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    final = GalleryIndex.load(index)
    expected = sorted(str(p) for p in first + batches[0] + batches[1])
    assert sorted(final.metadata.paths) == expected  # every crop of both runs, none twice
    assert final.features.shape == (len(expected), 64)


# ------------------------------------------------------------------------- item 6: nothing skipped silently

def test_folder_loader_warns_with_counts_about_subfolders_and_other_formats(tmp_path, caplog):
    folder = tmp_path / "gallery"
    _images(folder, (1,), seed=1)
    _images(folder / "more", (2,), seed=2)  # a subfolder of images: not read
    Image.new("RGB", (16, 32)).save(folder / "0003_c1_00.tif")  # a format the loader does not read
    Image.new("RGB", (16, 32)).save(folder / "0003_c2_00.gif")
    with caplog.at_level(logging.WARNING, logger="reidkit.data.market"):
        dataset = load_image_folder(folder)
    assert len(dataset.train) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(folder) in w and "skipped 3 entr" in w and "1 subfolder(s)" in w and "2 file(s)" in w
               for w in warnings), warnings


def test_market_root_warns_about_a_shot_in_both_query_and_gallery(tmp_path, caplog):
    import shutil

    from reidkit.data import load_dataset

    root = tmp_path / "root"
    _images(root / "bounding_box_train", (1,), seed=1)
    queries = _images(root / "query", (2, 3), seed=2)
    _images(root / "bounding_box_test", (2, 3), seed=3)
    for shot in queries[:2]:  # two query shots copied into the gallery: 2 names on both sides, counted by hand
        shutil.copy(shot, root / "bounding_box_test" / shot.name)
    with caplog.at_level(logging.WARNING, logger="reidkit.data.market"):
        load_dataset(root)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 image name(s) appear in both query and gallery" in w and queries[0].name in w for w in warnings), \
        warnings
    caplog.clear()
    for shot in queries[:2]:
        (root / "bounding_box_test" / shot.name).unlink()
    with caplog.at_level(logging.WARNING, logger="reidkit.data.market"):
        load_dataset(root)
    assert not any("both query and gallery" in r.getMessage() for r in caplog.records)


def _manifest(tmp_path: Path, rows: list[tuple[str, int, int, str]]) -> Path:
    _images(tmp_path, (1, 2), seed=1)
    path = tmp_path / "m.csv"
    path.write_text("path,pid,camid,split\n" + "".join(f"{p},{pid},{cam},{s}\n" for p, pid, cam, s in rows))
    return path


GOOD = [("0001_c1_01.png", 1, 0, "query"), ("0001_c2_01.png", 1, 1, "gallery"),
        ("0002_c1_01.png", 2, 0, "query"), ("0002_c2_01.png", 2, 1, "gallery")]


@pytest.mark.parametrize("extra, lines", [
    (("0001_c2_01.png", 1, 1, "gallery"), ("line 3", "line 6")),  # a duplicated row
    (("0002_c2_01.png", 1, 1, "gallery"), ("line 5", "line 6")),  # one path, two identities
    (("0001_c1_01.png", 1, 0, "gallery"), ("line 2", "line 6")),  # query that is its own gallery match
])
def test_manifest_refuses_a_path_on_two_rows_naming_the_lines(tmp_path, extra, lines):
    load_manifest(_manifest(tmp_path, GOOD))  # the same rows without the repeat load
    path = _manifest(tmp_path, [*GOOD, extra])
    with pytest.raises(DataError, match="listed on more than one row") as exc:
        load_manifest(path)
    message = str(exc.value)
    assert str(path) in message and all(line in message for line in lines)


def test_float_unit_range_array_is_scaled_by_255_not_cast_to_zeros(small_checkpoint):
    ext = Extractor(small_checkpoint, device="cpu")
    unit = np.random.default_rng(0).random((64, 32, 3))
    by_hand = np.rint(unit * 255.0).astype(np.uint8)
    np.testing.assert_allclose(ext.embed([unit]), ext.embed([by_hand]), atol=1e-6)
    assert not np.allclose(ext.embed([unit]), ext.embed([np.zeros_like(by_hand)]), atol=1e-3)
    with pytest.raises(ReIDError, match=r"images\[0\]: float arrays must hold values in \[0, 1\]"):
        ext.embed([unit * 255.0])  # 0..255 floats: refused, not clipped
