"""Classic methods as `reidkit evaluate --classic NAME`: hand-crafted features + a metric learned on --train,
returned in the layout `reidkit evaluate --features` reads (the learned metric as an embedding whose squared
Euclidean distances are the method's distances, so re-rankers apply unchanged)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data import load_dataset, split_arrays
from ..data.records import Record
from ..errors import ConfigError, DataError
from ..registry import Registry
from .lomo import LOMO
from .xqda import XQDA

ClassicMethod = Callable[..., dict[str, Any]]
CLASSIC_METHODS: Registry[ClassicMethod] = Registry("classic method", ConfigError)


@CLASSIC_METHODS.register("lomo-xqda")
def lomo_xqda(train: list[Record], query: list[Record], gallery: list[Record], show_progress: bool = False,
              lomo: LOMO | None = None) -> dict[str, Any]:
    """LOMO features of all images, XQDA fitted on `train` (cross-camera pairs when it has two cameras or more),
    query/gallery mapped into XQDA's metric embedding. Timings in `timing` (seconds)."""
    lomo = lomo or LOMO()
    train_paths, train_pids, train_camids = split_arrays(train)
    timing: dict[str, float] = {}
    start = time.perf_counter()
    train_features = lomo(train_paths, show_progress=show_progress, desc="LOMO train")
    timing["lomo_train_s"] = time.perf_counter() - start
    cross_camera = len(np.unique(train_camids)) > 1
    start = time.perf_counter()
    xqda = XQDA().fit(train_features, train_pids, train_camids if cross_camera else None)
    timing["xqda_fit_s"] = time.perf_counter() - start
    del train_features
    out: dict[str, Any] = {}
    for split, records in (("query", query), ("gallery", gallery)):
        paths, pids, camids = split_arrays(records)
        start = time.perf_counter()
        features = lomo(paths, show_progress=show_progress, desc=f"LOMO {split}")
        timing[f"lomo_{split}_s"] = time.perf_counter() - start
        key = split[0]
        out[f"{split}_features"] = xqda.transform(features)
        out[f"{key}_pids"], out[f"{key}_camids"], out[f"{key}_paths"] = pids, camids, np.asarray(paths)
    out["timing"] = timing
    out["info"] = {"lomo_dim": lomo.dim, "xqda_dim": int(xqda.W.shape[1]), "train_images": len(train),
                   "train_ids": int(len(np.unique(train_pids))), "cross_camera_pairs": cross_camera,
                   "intra_pairs": xqda.num_intra, "extra_pairs": xqda.num_extra}
    return out


def training_records(train_root: str | os.PathLike) -> list[Record]:
    """The training images of `train_root`: a Market root's bounding_box_train, a manifest's train split or a
    folder of Market-named images."""
    records = load_dataset(train_root).train
    if not records:
        raise DataError(f"--train {train_root}: no training images (expected a Market layout with "
                        "bounding_box_train/, a manifest with a train split, or a folder of Market-named images)")
    if len({r.pid for r in records}) < 2:
        raise DataError(f"--train {train_root}: a single identity ({records[0].pid}); a learned metric needs at "
                        "least two")
    return records


def classic_split_features(method: str, train_root: str | os.PathLike, data_root: str | os.PathLike,
                           show_progress: bool = False) -> dict[str, Any]:
    """Run classic `method` trained on `train_root`, on the query/gallery of `data_root`."""
    run = CLASSIC_METHODS.get(method)
    train = training_records(train_root)
    dataset = load_dataset(data_root)
    if not dataset.query or not dataset.gallery:
        raise DataError(f"--data {data_root}: needs query and gallery splits to evaluate")
    return run(train, dataset.query, dataset.gallery, show_progress=show_progress)
