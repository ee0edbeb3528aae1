"""Dataset loading, validation split and image reading (reidkit.data).

References are independent of the code under test: hand-written expected values, plain-loop re-implementations
of the rules, and images compared pixel for pixel with what the test itself wrote.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from reidkit import cli
from reidkit.data import (
    Record,
    ReIDDataset,
    carve_validation,
    carve_validation_records,
    check_query_gallery,
    load_cuhk03,
    load_dataset,
    load_image_folder,
    load_manifest,
    load_market,
    parse_market_name,
    read_image,
    verify_images,
    write_manifest,
)
from reidkit.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CUHK03NP_TRAIN = SHARED / "datasets" / "cuhk03np-detected" / "bounding_box_train"


def _save_image(path: Path, value: int = 128, size: tuple[int, int] = (4, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path)
    return path


def _make_market(root: Path, files: dict[str, list[str]]) -> Path:
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            _save_image(root / folder / name, value=(17 * i) % 256)
    return root


def _basic_market(root: Path) -> Path:
    root = _make_market(root, {
        "bounding_box_train": ["0001_c1s1_000100_00.jpg", "0001_c2s1_000200_00.jpg", "0002_c1s2_000300_01.jpg"],
        "query": ["0005_c1s1_001000_00.jpg", "0007_c2s1_002000_00.jpg"],
        "bounding_box_test": ["0005_c2s1_001500_00.jpg", "0005_c1s1_001600_00.jpg",
                              "0007_c2s1_002100_00.jpg",  # same camera as its query: cannot be scored
                              "0000_c1s1_000001_00.jpg", "-1_c1s1_000002_00.jpg", "-1_c2s1_000003_00.jpg"],
    })
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    return root


def _names(records: list[Record]) -> list[str]:
    return sorted(Path(r.path).name for r in records)


# ---------------------------------------------------------------- name parsing

@pytest.mark.parametrize(("name", "expected"), [
    ("0002_c1s1_000451_03.jpg", (2, 0, 451)),        # Market-1501
    ("-1_c3s2_012345_01.jpg", (-1, 2, 12345)),       # Market junk
    ("0000_c6s4_002502_02.jpg", (0, 5, 2502)),       # Market distractor
    ("0001_c2_f0046182.jpg", (1, 1, 46182)),         # DukeMTMC-reID
    ("0001_c1_00.jpg", (1, 0, None)),                # CUHK03-NP: no frame
    ("1467_c2_09.png", (1467, 1, None)),
])
def test_parse_market_name(name, expected):
    assert parse_market_name(name) == expected


@pytest.mark.parametrize(("name", "reason"), [
    ("person.jpg", "expected 'PID_cCAM"),
    ("0001-c1-00.jpg", "expected 'PID_cCAM"),
    ("0001_c0_00.jpg", "camera numbers start at 1"),
    ("-3_c1_00.jpg", "negative"),
    ("1-2_c1_00.jpg", "not an integer"),
])
def test_parse_market_name_errors_name_file_and_reason(name, reason):
    with pytest.raises(DataError) as info:
        parse_market_name(name)
    assert name in str(info.value) and reason in str(info.value)


# ---------------------------------------------------------------- Market loader

def test_load_market_parses_drops_junk_keeps_distractors(tmp_path, caplog):
    root = _basic_market(tmp_path / "market")
    with caplog.at_level(logging.INFO, logger="reidkit.data"):
        ds = load_market(root)
    assert _names(ds.train) == ["0001_c1s1_000100_00.jpg", "0001_c2s1_000200_00.jpg", "0002_c1s2_000300_01.jpg"]
    assert {(r.pid, r.camid, r.frame) for r in ds.train} == {(1, 0, 100), (1, 1, 200), (2, 0, 300)}
    assert sorted((r.pid, r.camid) for r in ds.query) == [(5, 0), (7, 1)]
    assert all(Path(r.path).is_file() for r in ds.train + ds.query + ds.gallery)
    # junk (-1) dropped, the distractor (0) kept, Thumbs.db ignored: 6 image files -> 4 records
    assert sorted(r.pid for r in ds.gallery) == [0, 5, 5, 7]
    notes = "\n".join(ds.notes)
    assert "dropped 2 junk image(s)" in notes
    assert "ignored 1 non-image" in notes and "Thumbs.db" in notes
    assert "1 distractor" in notes
    # query 7 has gallery images only in its own camera: reported with a count, in notes and as a warning
    assert "1 of 2 queries" in notes
    assert any(rec.levelno == logging.WARNING and "1 of 2 queries" in rec.getMessage() for rec in caplog.records)
    assert "note: " in ds.summary()


def test_load_market_missing_folder_names_it(tmp_path):
    root = _basic_market(tmp_path / "market")
    shutil.rmtree(root / "bounding_box_test")
    with pytest.raises(DataError, match=r"missing folder .*bounding_box_test.*does not exist"):
        load_market(root)
    with pytest.raises(DataError, match=r"missing folder .*nowhere"):
        load_market(tmp_path / "nowhere")


def test_load_market_empty_split_is_an_error(tmp_path):
    root = _basic_market(tmp_path / "market")
    for f in (root / "query").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"empty split: folder .*query contains no usable images"):
        load_market(root)
    _save_image(root / "query" / "-1_c1s1_000001_00.jpg")  # junk only is empty too, and says so
    with pytest.raises(DataError, match=r"query contains no usable images \(only 1 junk images\)"):
        load_market(root)


def test_load_market_unparseable_image_name_is_an_error(tmp_path):
    root = _basic_market(tmp_path / "market")
    _save_image(root / "query" / "IMG_0042.jpg")
    with pytest.raises(DataError, match=r"cannot parse image name IMG_0042\.jpg"):
        load_market(root)


def test_load_market_verify_reports_corrupt_image(tmp_path):
    root = _basic_market(tmp_path / "market")
    (root / "query" / "0009_c1s1_000001_00.jpg").write_bytes(b"garbage, not a jpeg")
    assert len(load_market(root).query) == 3  # without verify only names are read
    with pytest.raises(DataError, match=r"1 unreadable image\(s\): .*0009_c1s1_000001_00\.jpg: cannot identify"):
        load_market(root, verify=True)


def test_load_image_folder_is_train_only_and_hints_at_market_root(tmp_path):
    root = _basic_market(tmp_path / "market")
    ds = load_image_folder(root / "bounding_box_train")
    assert len(ds.train) == 3 and ds.query == [] and ds.gallery == []
    with pytest.raises(DataError, match=r"no usable images; did you mean .*bounding_box_train"):
        load_image_folder(root)


# ---------------------------------------------------------------- query/gallery check

def _naive_unmatched(query: list[Record], gallery: list[Record]) -> int:
    count = 0
    for q in query:
        if not any(g.pid == q.pid and g.camid != q.camid for g in gallery):
            count += 1
    return count


def _random_records(rng: np.random.Generator, n: int) -> list[Record]:
    return [Record(f"img{i}", int(p), int(c)) for i, (p, c) in enumerate(zip(rng.integers(0, 12, n),
                                                                              rng.integers(0, 4, n)))]


def test_check_query_gallery_matches_plain_loop():
    rng = np.random.default_rng(3)
    for _ in range(30):
        query, gallery = _random_records(rng, int(rng.integers(1, 25))), _random_records(rng, int(rng.integers(0, 25)))
        report = check_query_gallery(ReIDDataset(query=query, gallery=gallery))
        assert report.num_queries == len(query)
        assert report.num_unmatched == _naive_unmatched(query, gallery)


def test_check_query_gallery_hand_example():
    query = [Record("q1", 1, 0), Record("q2", 2, 0), Record("q3", 3, 1)]
    gallery = [Record("g1", 1, 1), Record("g2", 2, 0), Record("g3", 4, 0)]
    report = check_query_gallery(ReIDDataset(query=query, gallery=gallery))
    assert (report.num_unmatched, report.unmatched_pids) == (2, (2, 3))


# ---------------------------------------------------------------- images

def test_read_image_converts_to_rgb(tmp_path):
    gray = np.arange(32, dtype=np.uint8).reshape(8, 4) * 7
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.mode == "RGB" and img.size == (4, 8)
    assert np.array_equal(np.asarray(img), np.repeat(gray[..., None], 3, axis=2))


def test_read_image_errors_name_file_and_reason(tmp_path):
    (tmp_path / "garbage.jpg").write_bytes(b"\x00\x01 definitely not an image")
    good = _save_image(tmp_path / "good.jpg", size=(64, 128))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cannot read image .*garbage\.jpg: cannot identify image file"):
        read_image(tmp_path / "garbage.jpg")
    with pytest.raises(DataError, match=r"cannot read image .*missing\.jpg: file not found"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(DataError, match=r"cannot read image .*truncated\.jpg: (?i:.*truncated)"):
        read_image(truncated)


def test_verify_images_finds_every_bad_image_in_order(tmp_path):
    paths = [_save_image(tmp_path / f"{i}.png") for i in range(5)]
    paths[1].write_bytes(b"junk")
    paths[3].unlink()
    bad = verify_images([Record(str(p), 1, 0) for p in paths])
    assert [Path(p).name for p, _ in bad] == ["1.png", "3.png"]
    assert "cannot identify" in bad[0][1] and bad[1][1] == "file not found"


# ---------------------------------------------------------------- manifests

def _manifest_images(folder: Path) -> list[Path]:
    return [_save_image(folder / "imgs" / f"{n}.jpg") for n in ("a", "b", "c", "d", "e")]


def test_load_manifest_csv_with_splits_relative_paths_and_junk(tmp_path):
    _manifest_images(tmp_path)
    (tmp_path / "m.csv").write_text("path,pid,camid,split,frame\n"
                                    "imgs/a.jpg,10,0,train,5\n"
                                    f"{tmp_path / 'imgs' / 'b.jpg'},11,1,train,\n"
                                    "imgs/c.jpg,12,0,query,\n"
                                    "imgs/d.jpg,12,1,gallery,7\n"
                                    "imgs/e.jpg,-1,1,gallery,\n")
    ds = load_manifest(tmp_path / "m.csv")
    assert ds.train == [Record(str(tmp_path / "imgs" / "a.jpg"), 10, 0, 5),
                        Record(str(tmp_path / "imgs" / "b.jpg"), 11, 1, None)]
    assert ds.query == [Record(str(tmp_path / "imgs" / "c.jpg"), 12, 0, None)]
    assert ds.gallery == [Record(str(tmp_path / "imgs" / "d.jpg"), 12, 1, 7)]
    assert any("dropped 1 junk row" in n for n in ds.notes)


def test_load_manifest_csv_without_split_column_is_all_train(tmp_path):
    _manifest_images(tmp_path)
    (tmp_path / "m.csv").write_text("path,pid,camid\nimgs/a.jpg,1,0\nimgs/b.jpg,2,1\n")
    ds = load_manifest(tmp_path / "m.csv")
    assert [(Path(r.path).name, r.pid, r.camid) for r in ds.train] == [("a.jpg", 1, 0), ("b.jpg", 2, 1)]
    assert ds.query == [] and ds.gallery == []


@pytest.mark.parametrize(("text", "pattern"), [
    ("path,pid\nimgs/a.jpg,1\n", r"m\.csv: header must have columns path, pid, camid; missing camid"),
    ("path,pid,camid\nimgs/a.jpg,1,0\nimgs/b.jpg,two,0\n", r"m\.csv line 3: pid must be an integer, got 'two'"),
    ("path,pid,camid,split\nimgs/a.jpg,1,0,val\n", r"m\.csv line 2: split must be one of train, query, gallery"),
    ("path,pid,camid\nimgs/a.jpg,1\n", r"m\.csv line 2: missing value for camid"),
    ("path,pid,camid\nimgs/zz.jpg,1,0\n", r"m\.csv: 1 listed image\(s\) do not exist: .*zz\.jpg"),
    ("path,pid,camid\n", r"empty split: manifest .*m\.csv has no images"),
    ("path,pid,camid,split\nimgs/a.jpg,1,0,query\n", r"empty split: manifest .*m\.csv has no gallery rows"),
])
def test_load_manifest_csv_errors_name_file_and_row(tmp_path, text, pattern):
    _manifest_images(tmp_path)
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DataError, match=pattern):
        load_manifest(tmp_path / "m.csv")


def test_load_manifest_json_list_and_split_object(tmp_path):
    _manifest_images(tmp_path)
    rows = [{"path": "imgs/a.jpg", "pid": 1, "camid": 0},
            {"path": "imgs/b.jpg", "pid": 2, "camid": 1, "split": "query", "frame": 3},
            {"path": "imgs/c.jpg", "pid": 2, "camid": 0, "split": "gallery"}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    ds = load_manifest(tmp_path / "list.json")
    assert [(Path(r.path).name, r.pid) for r in ds.train] == [("a.jpg", 1)]
    assert ds.query == [Record(str(tmp_path / "imgs" / "b.jpg"), 2, 1, 3)]
    assert [Path(r.path).name for r in ds.gallery] == ["c.jpg"]

    (tmp_path / "obj.json").write_text(json.dumps({"train": rows[:1], "query": rows[1:2], "gallery": rows[2:]}))
    same = load_manifest(tmp_path / "obj.json")
    assert (same.train, same.query, same.gallery) == (ds.train, ds.query, ds.gallery)


@pytest.mark.parametrize(("data", "pattern"), [
    ({"train": [{"path": "imgs/a.jpg", "pid": 1, "camid": 0, "split": "query"}]},
     r"item train\[0\]: split 'query' contradicts"),
    ([{"path": "imgs/a.jpg", "pid": 1.5, "camid": 0}], r"item \[0\]: pid must be an integer, got 1\.5"),
    ({"val": []}, r"expected a list of rows or an object with keys train/query/gallery"),
    ([["imgs/a.jpg", 1, 0]], r"item \[0\]: expected an object"),
])
def test_load_manifest_json_errors(tmp_path, data, pattern):
    _manifest_images(tmp_path)
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"m\.json.*" + pattern):
        load_manifest(tmp_path / "m.json")


def test_load_manifest_unreadable_files(tmp_path):
    (tmp_path / "m.json").write_text("[{")
    with pytest.raises(DataError, match=r"m\.json: invalid JSON"):
        load_manifest(tmp_path / "m.json")
    (tmp_path / "latin1.csv").write_bytes("path,pid,camid\nimgs/caf\u00e9.jpg,1,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"cannot read manifest .*latin1\.csv: not UTF-8 text"):
        load_manifest(tmp_path / "latin1.csv")
    (tmp_path / "m.txt").write_text("path,pid,camid\n")
    with pytest.raises(DataError, match=r"m\.txt: unknown format '\.txt'; use \.csv or \.json"):
        load_manifest(tmp_path / "m.txt")


@pytest.mark.parametrize("relative", [False, True])
def test_write_manifest_round_trips(tmp_path, relative):
    root = _basic_market(tmp_path / "market")
    ds = load_market(root)
    out = tmp_path / "sub" / "m.csv"
    write_manifest(ds, out, relative=relative)
    rows = list(csv.DictReader(out.open()))
    assert Path(rows[0]["path"]).is_absolute() != relative
    back = load_manifest(out)
    for split in ("train", "query", "gallery"):
        assert getattr(back, split) == getattr(ds, split)


# ---------------------------------------------------------------- load_dataset auto-detection

def test_load_dataset_detects_layout(tmp_path):
    root = _basic_market(tmp_path / "market")
    assert len(load_dataset(root).gallery) == 4
    assert len(load_dataset(root / "bounding_box_train").train) == 3
    write_manifest(load_market(root), tmp_path / "m.csv")
    assert len(load_dataset(tmp_path / "m.csv").query) == 2
    with pytest.raises(DataError, match=r"missing dataset .*nothing"):
        load_dataset(tmp_path / "nothing")


# ---------------------------------------------------------------- CUHK03 official .mat

H, W = 6, 4  # different on purpose: a transposed image would not compare equal


def _cuhk03_name(pair: int, person: int, col: int) -> str:
    return f"{pair + 1}_{person + 1:03d}_{1 if col < 5 else 2}_{col + 1:02d}.png"


def _write_cuhk03_mat(path: Path, persons_per_pair: list[int], empty: set[tuple[int, int, int]],
                      key: str = "detected") -> dict[str, np.ndarray]:
    """A MATLAB v7.3-shaped file: `key` is a cell of camera pairs, each a persons x 10 cell of HxWx3 images.

    MATLAB writes arrays column-major, so h5py sees every array transposed: an HxWx3 image as 3xWxH and
    a persons x 10 cell as 10 x persons; cell entries are object references into '#refs#'.
    """
    rng = np.random.default_rng(0)
    images: dict[str, np.ndarray] = {}
    counter = itertools.count()
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        pair_refs = []
        for pair, num_persons in enumerate(persons_per_pair):
            cells = np.empty((10, num_persons), dtype=h5py.ref_dtype)
            for person, col in itertools.product(range(num_persons), range(10)):
                if (pair, person, col) in empty:
                    ds = refs.create_dataset(f"e{next(counter)}", data=np.zeros(2, dtype=np.uint64))
                    ds.attrs["MATLAB_empty"] = np.uint8(1)
                else:
                    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                    images[_cuhk03_name(pair, person, col)] = img
                    ds = refs.create_dataset(f"i{next(counter)}", data=img.T)
                cells[col, person] = ds.ref
            pair_refs.append(refs.create_dataset(f"p{pair}", data=cells, dtype=h5py.ref_dtype).ref)
        f.create_dataset(key, data=np.array([pair_refs], dtype=h5py.ref_dtype), dtype=h5py.ref_dtype)
    return images


def _write_split_mat(path: Path, names: list[str], **overrides) -> dict:
    """New-protocol config: pair 1 identities train; pair 2 identities test (first image per view = query)."""
    labels = [100 * int(n.split("_")[0]) + int(n.split("_")[1]) for n in names]
    cams = [int(n.split("_")[2]) for n in names]
    train = [i for i, n in enumerate(names) if n.startswith("1_")]
    test = [i for i, n in enumerate(names) if n.startswith("2_")]
    seen, query = set(), []
    for i in test:
        if (labels[i], cams[i]) not in seen:
            seen.add((labels[i], cams[i]))
            query.append(i)
    gallery = [i for i in test if i not in query]
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    content = {"filelist": filelist, "labels": np.array(labels, float)[:, None],
               "camId": np.array(cams, float)[:, None],
               "train_idx": np.array(train)[:, None] + 1, "query_idx": np.array(query)[:, None] + 1,
               "gallery_idx": np.array(gallery)[:, None] + 1}
    content.update(overrides)
    content = {k: v for k, v in content.items() if v is not None}
    scipy.io.savemat(path, content)
    return {"labels": labels, "cams": cams, "train": train, "query": query, "gallery": gallery}


@pytest.fixture
def cuhk03_files(tmp_path):
    empty = {(0, 1, 7), (0, 1, 8), (0, 1, 9), (1, 0, 4)}  # person 2 of pair 1 has 7 images, etc.
    images = _write_cuhk03_mat(tmp_path / "cuhk-03.mat", [3, 2], empty)
    names = sorted(images)
    np.random.default_rng(1).shuffle(names)  # the filelist order must not matter
    split = _write_split_mat(tmp_path / "split.mat", names)
    return tmp_path, images, names, split


def test_load_cuhk03_round_trip(cuhk03_files):
    folder, images, names, split = cuhk03_files
    assert len(images) == 5 * 10 - 4
    ds = load_cuhk03(folder / "cuhk-03.mat", folder / "split.mat", out_dir=folder / "cache")
    for part in ("train", "query", "gallery"):
        expected = {(str(folder / "cache" / names[i]), split["labels"][i], split["cams"][i] - 1)
                    for i in split[part]}
        assert {(r.path, r.pid, r.camid) for r in getattr(ds, part)} == expected
    assert len(ds.query) == 4  # 2 test identities x 2 views
    for name, img in images.items():  # pixels identical, not transposed
        assert np.array_equal(np.asarray(Image.open(folder / "cache" / name)), img)
    assert any("wrote 46 PNG" in n and "4 empty cell" in n for n in ds.notes)


def test_load_cuhk03_uses_cache_without_the_mat(cuhk03_files):
    folder, images, names, split = cuhk03_files
    first = load_cuhk03(folder / "cuhk-03.mat", folder / "split.mat", out_dir=folder / "cache")
    (folder / "cuhk-03.mat").unlink()
    again = load_cuhk03(folder / "cuhk-03.mat", folder / "split.mat", out_dir=folder / "cache")
    assert (again.train, again.query, again.gallery) == (first.train, first.query, first.gallery)


def test_load_cuhk03_rewrites_only_missing_images(cuhk03_files):
    folder, images, names, split = cuhk03_files
    load_cuhk03(folder / "cuhk-03.mat", folder / "split.mat", out_dir=folder / "cache")
    (folder / "cache" / names[0]).unlink()
    ds = load_cuhk03(folder / "cuhk-03.mat", folder / "split.mat", out_dir=folder / "cache")
    assert any("wrote 1 PNG" in n for n in ds.notes)
    assert np.array_equal(np.asarray(Image.open(folder / "cache" / names[0])), images[names[0]])


def test_load_cuhk03_errors(cuhk03_files):
    folder, images, names, split = cuhk03_files
    mat, cache = folder / "cuhk-03.mat", folder / "cache"
    with pytest.raises(DataError, match=r"cuhk-03\.mat: missing key 'labeled' \(keys: #refs#, detected\)"):
        load_cuhk03(mat, folder / "split.mat", detected=False, out_dir=folder / "cache_l")
    _write_split_mat(folder / "no_labels.mat", names, labels=None)
    with pytest.raises(DataError, match=r"no_labels\.mat: missing key\(s\) labels"):
        load_cuhk03(mat, folder / "no_labels.mat", out_dir=cache)
    _write_split_mat(folder / "bad_idx.mat", names, query_idx=np.array([[len(names) + 1]]))
    with pytest.raises(DataError, match=rf"bad_idx\.mat: query_idx has index {len(names) + 1} outside"):
        load_cuhk03(mat, folder / "bad_idx.mat", out_dir=cache)
    _write_split_mat(folder / "ghost.mat", names + ["1_002_2_10.png"])  # an empty cell of the .mat
    with pytest.raises(DataError, match=r"ghost\.mat: 1 listed image\(s\) are not in .*1_002_2_10\.png"):
        load_cuhk03(mat, folder / "ghost.mat", out_dir=cache)
    (folder / "not_hdf5.mat").write_bytes(b"MATLAB 5.0 MAT-file, not v7.3")
    with pytest.raises(DataError, match=r"not_hdf5\.mat: not a MATLAB v7\.3 \(HDF5\) file"):
        load_cuhk03(folder / "not_hdf5.mat", folder / "split.mat", out_dir=folder / "cache2")
    with pytest.raises(DataError, match=r"missing file .*absent\.mat"):
        load_cuhk03(mat, folder / "absent.mat", out_dir=cache)


# ---------------------------------------------------------------- validation split

def _synthetic_records(seed: int = 0, num_ids: int = 30) -> list[Record]:
    """Ids 1..num_ids with 1-3 cameras of 1-4 images; id 1 has one camera, id 2 one image in its 2nd camera."""
    rng = np.random.default_rng(seed)
    plan = {1: {0: 3}, 2: {0: 3, 1: 1}}
    for pid in range(3, num_ids + 1):
        cams = rng.choice(4, size=int(rng.integers(2, 4)), replace=False)
        plan[pid] = {int(c): int(rng.integers(2, 5)) for c in cams}
    return [Record(f"/data/{pid:04d}_c{cam + 1}_{k:02d}.jpg", pid, cam)
            for pid, cams in plan.items() for cam, n in cams.items() for k in range(n)]


def _check_split_properties(records: list[Record], ds: ReIDDataset, num_val_ids: int) -> None:
    val_ids = {r.pid for r in ds.query}
    assert len(val_ids) == num_val_ids
    assert {r.pid for r in ds.gallery} == val_ids
    assert not val_ids & {r.pid for r in ds.train}                        # disjoint identities
    assert Counter(ds.train + ds.query + ds.gallery) == Counter(records)  # union = input, nothing lost or doubled
    for pid in val_ids:                                                    # one query per camera per val id
        cams_of_id = sorted({r.camid for r in records if r.pid == pid})
        assert sorted(r.camid for r in ds.query if r.pid == pid) == cams_of_id
    assert _naive_unmatched(ds.query, ds.gallery) == 0                     # every query can be scored


def test_carve_validation_records_properties():
    records = _synthetic_records()
    for seed in range(5):
        ds = carve_validation_records(records, num_val_ids=8, seed=seed)
        _check_split_properties(records, ds, 8)
        assert not {1, 2} & {r.pid for r in ds.query}  # never ids that cannot be scored


def test_carve_validation_records_is_deterministic_and_order_free():
    records = _synthetic_records()
    shuffled = [records[i] for i in np.random.default_rng(5).permutation(len(records))]
    a = carve_validation_records(records, 8, seed=11)
    b = carve_validation_records(shuffled, 8, seed=11)
    assert (a.train, a.query, a.gallery) == (b.train, b.query, b.gallery)
    outcomes = {tuple(r.path for r in carve_validation_records(records, 8, seed=s).query) for s in range(6)}
    assert len(outcomes) > 1  # the seed matters


def test_carve_validation_records_argument_errors():
    records = _synthetic_records(num_ids=10)
    for bad in (0, -1, 10, 11):
        with pytest.raises(ConfigError, match=rf"num_val_ids={bad}: must be between 1 and 9"):
            carve_validation_records(records, bad, seed=0)
    with pytest.raises(DataError, match=r"num_val_ids=9: only 8 of 10 identities have two cameras"):
        carve_validation_records(records, 9, seed=0)


def _split_source(folder: Path, num_ids: int = 6) -> Path:
    for pid in range(1, num_ids + 1):
        for cam in (1, 2):
            for k in range(3):
                _save_image(folder / f"{pid:04d}_c{cam}_{k:02d}.jpg", value=pid * 10 + k)
    return folder


def test_carve_validation_market_layout_reads_back(tmp_path):
    source = _split_source(tmp_path / "train")
    summary = carve_validation(source, tmp_path / "out", num_val_ids=2, seed=3, fmt="market")
    back = load_market(tmp_path / "out")
    assert (len(back.train), len(back.query), len(back.gallery)) == (24, 4, 8)
    assert "query          4 images      2 ids" in summary
    assert Counter(_names(back.train + back.query + back.gallery)) == Counter(p.name for p in source.iterdir())
    expected = carve_validation_records(load_image_folder(source).train, 2, seed=3)
    assert _names(back.query) == _names(expected.query)
    assert {p.name for p in tmp_path.iterdir()} == {"train", "out"}  # no leftover temp folder
    with pytest.raises(DataError, match=r"output folder .*out already exists and is not empty"):
        carve_validation(source, tmp_path / "out", num_val_ids=2, seed=3)


def test_carve_validation_interrupted_copy_leaves_nothing(tmp_path, monkeypatch):
    source = _split_source(tmp_path / "train")
    real_copy, calls = shutil.copy2, itertools.count()

    def failing_copy(src, dst):
        if next(calls) == 10:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        carve_validation(source, tmp_path / "out", num_val_ids=2, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # no output, no leftover temp folder


def test_carve_validation_rejects_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match=r"fmt='zip': must be 'market' or 'manifest'"):
        carve_validation(_split_source(tmp_path / "train"), tmp_path / "out", num_val_ids=2, fmt="zip")


def test_carve_validation_manifest(tmp_path):
    source = _split_source(tmp_path / "train")
    carve_validation(source, tmp_path / "val.csv", num_val_ids=3, seed=1, fmt="manifest")
    back = load_manifest(tmp_path / "val.csv")
    expected = carve_validation_records(load_image_folder(source).train, 3, seed=1)
    for split in ("train", "query", "gallery"):
        assert getattr(back, split) == getattr(expected, split)


def test_cli_split_success_and_error(tmp_path, capsys):
    source = _split_source(tmp_path / "train")
    assert cli.main(["split", str(source), "--out", str(tmp_path / "out"), "--val-ids", "2"]) == 0
    assert "wrote market to" in capsys.readouterr().out
    assert cli.main(["split", str(source), "--out", str(tmp_path / "o2"), "--val-ids", "6"]) == 2
    assert "error: num_val_ids=6" in capsys.readouterr().err
    assert cli.main(["split", str(tmp_path / "nope"), "--out", str(tmp_path / "o3")]) == 2
    assert "missing folder" in capsys.readouterr().err


# ---------------------------------------------------------------- real data (../shared)

@pytest.mark.shared
def test_cuhk03np_detected_train_split(tmp_path):
    if not CUHK03NP_TRAIN.is_dir():
        pytest.skip(f"{CUHK03NP_TRAIN} not present")
    ds = load_image_folder(CUHK03NP_TRAIN)
    assert (len(ds.train), len({r.pid for r in ds.train})) == (7365, 767)
    assert {r.camid for r in ds.train} == {0, 1}
    carved = carve_validation_records(ds.train, num_val_ids=150, seed=0)
    assert len({r.pid for r in carved.train}) == 617
    assert len(carved.query) == 300 and len({r.pid for r in carved.query}) == 150
    _check_split_properties(ds.train, carved, 150)

    out = tmp_path / "cuhk03np-val"
    assert cli.main(["split", str(CUHK03NP_TRAIN), "--out", str(out), "--val-ids", "150", "--seed", "0"]) == 0
    back = load_market(out)
    assert (len(back.train), len(back.query), len(back.gallery)) == (
        len(carved.train), 300, 7365 - len(carved.train) - 300)
    assert _names(back.query) == _names(carved.query)
    assert check_query_gallery(back).num_unmatched == 0


def test_market_root_with_only_a_training_folder_loads_as_train(tmp_path):
    root = _basic_market(tmp_path / "market")
    shutil.rmtree(root / "bounding_box_test")
    shutil.rmtree(root / "query")
    ds = load_dataset(root)
    expected = sorted(p.name for p in (root / "bounding_box_train").glob("*.jpg") if not p.name.startswith("-1"))
    assert sorted(Path(r.path).name for r in ds.train) == expected
    assert ds.query == [] and ds.gallery == []
