"""Attribute labels in manifests (attr_<name> columns) and from the synthetic generator; bad input names the file
and the column."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from reidkit.data import load_manifest
from reidkit.data.manifest import write_manifest
from reidkit.data.records import attribute_matrix, relabel
from reidkit.data.synth import (
    PALETTE,
    SynthConfig,
    attribute_names,
    generate_market_dataset,
    identity_attributes,
    identity_for,
)
from reidkit.errors import DataError


@pytest.fixture()
def images(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (8, 16)).save(tmp_path / name)
    return tmp_path


def _write(path, text):
    path.write_text(text)
    return path


def test_manifest_attribute_columns_become_record_labels(images):
    m = _write(images / "m.csv", "path,pid,camid,attr_hat,attr_bag\na.jpg,1,0,1,0\nb.jpg,1,1,0,1\nc.jpg,2,0,1,1\n")
    ds = load_manifest(m)
    assert ds.train[0].attributes == (("bag", 0), ("hat", 1))
    np.testing.assert_array_equal(attribute_matrix(ds.train, ["hat", "bag"], "m"), [[1, 0], [0, 1], [1, 1]])
    relabelled, _ = relabel(ds.train)
    assert relabelled[2].attributes == (("bag", 1), ("hat", 1)) and relabelled[2].pid == 1
    out = write_manifest(ds, images / "copy.csv")  # round trip keeps the columns
    assert load_manifest(out).train == ds.train


def test_json_manifest_attributes(images):
    rows = [{"path": "a.jpg", "pid": 1, "camid": 0, "attr_hat": True},
            {"path": "b.jpg", "pid": 2, "camid": 1, "attr_hat": 0}]
    ds = load_manifest(_write(images / "m.json", json.dumps(rows)))
    assert [r.attributes for r in ds.train] == [(("hat", 1),), (("hat", 0),)]


def test_unknown_attribute_value_names_file_line_and_column(images):
    m = _write(images / "m.csv", "path,pid,camid,attr_hat\na.jpg,1,0,1\nb.jpg,1,1,red\n")
    with pytest.raises(DataError, match=r"m\.csv line 3: unknown value 'red' in attribute column attr_hat"):
        load_manifest(m)


def test_missing_attribute_value_names_the_column(images):
    m = _write(images / "m.csv", "path,pid,camid,attr_hat,attr_bag\na.jpg,1,0,1,0\nb.jpg,1,1,,1\n")
    with pytest.raises(DataError, match=r"m\.csv line 3: missing value for attribute column attr_hat"):
        load_manifest(m)


def test_csv_row_with_more_fields_than_the_header(images):
    m = _write(images / "m.csv", "path,pid,camid,attr_hat\na.jpg,1,0,1\nb.jpg,1,1,0,1\n")
    with pytest.raises(DataError, match=r"m\.csv line 3: 1 field\(s\) more than the header"):
        load_manifest(m)


def test_mismatched_attribute_columns_across_json_rows(images):
    rows = [{"path": "a.jpg", "pid": 1, "camid": 0, "attr_hat": 1, "attr_bag": 0},
            {"path": "b.jpg", "pid": 2, "camid": 1, "attr_hat": 0}]
    with pytest.raises(DataError, match=r"m\.json item \[1\]: 1 attribute column\(s\) where .*\[0\] has 2 "
                                        r"\(missing attr_bag\)"):
        load_manifest(_write(images / "m.json", json.dumps(rows)))


def test_attribute_matrix_names_the_missing_column(images):
    ds = load_manifest(_write(images / "m.csv", "path,pid,camid,attr_hat\na.jpg,1,0,1\n"))
    with pytest.raises(DataError, match=r"where: image .*a\.jpg has no attribute label for column\(s\) attr_bag"):
        attribute_matrix(ds.train, ["hat", "bag"], "where")


def test_synthetic_attributes_are_the_drawn_identity(tmp_path):
    cfg = SynthConfig(num_train_ids=4, num_test_ids=2, images_per_camera=2)
    ident = identity_for(cfg, 3)
    labels = identity_attributes(ident)
    # by hand from the identity's own fields: the palette row of the main shirt colour, the bag, the garment
    names = ("black", "white", "grey", "navy", "blue", "red", "green", "beige", "brown", "yellow", "pink", "purple")
    shirt = names[int(np.argmin(np.abs(PALETTE - ident.shirt[0]).sum(1)))]
    assert labels[f"upper_{shirt}"] == 1 and sum(labels[f"upper_{n}"] for n in names) == 1
    assert labels["bag_backpack"] == (ident.bag == "backpack") and labels[f"lower_{ident.lower_kind}"] == 1
    assert labels["long_hair"] == ident.long_hair and list(labels) == list(attribute_names())
    root = generate_market_dataset(tmp_path / "s", cfg, show_progress=False, attributes=True)
    with open(root / "attributes.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(1 for _ in root.rglob("*.jpg"))
    row = next(r for r in rows if r["pid"] == "3")
    assert {k[5:]: int(v) for k, v in row.items() if k.startswith("attr_")} == labels
    ds = load_manifest(root / "attributes.csv")
    assert len(ds.query) == 4 and all(len(r.attributes) == len(labels) for r in ds.gallery)
    # asking again (complete dataset) regenerates nothing and keeps the manifest; it is not a foreign file
    assert generate_market_dataset(root, cfg, show_progress=False, attributes=True) == root
    generate_market_dataset(root, SynthConfig(num_train_ids=3, num_test_ids=2, images_per_camera=2),
                            show_progress=False)
