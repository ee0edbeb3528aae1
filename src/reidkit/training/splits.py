"""Which images train and which validate, decided once for every task, and said on the console."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..data import load_dataset
from ..data.records import ReIDDataset
from ..data.split import carve_validation_records
from ..errors import ConfigError
from .config import VALIDATION_MODES


class SplitOptions(Protocol):
    validation: str
    val_ids: int
    split_seed: int


def prepare_splits(root: str | Path | None, options: SplitOptions) -> ReIDDataset:
    """Train / validation query / validation gallery for `options.validation`:
    auto (the root's own query/gallery if it has them, else carve) | carve | dataset | none.

    `auto` on a benchmark root would validate on its TEST split: the recipes pass the bounding_box_train folder
    (which has no query/gallery, so validation is carved from its identities), and a root written by `reidkit
    split` validates on its held-out identities. The dataset's `notes[0]` says how the identities were split
    (see `describe_split`)."""
    if not root:
        raise ConfigError("no dataset: pass --data DIR or set data.root in the config")
    root, mode = Path(root), options.validation
    if mode not in VALIDATION_MODES:
        raise ConfigError(f"data.validation={mode!r}: expected {', '.join(VALIDATION_MODES[:-1])} or none")
    dataset = load_dataset(root)
    has_own = bool(dataset.query and dataset.gallery)
    if mode == "dataset" and not has_own:
        raise ConfigError(f"data.validation=dataset but {root} has no query/gallery split")
    if mode in ("auto", "dataset") and has_own:
        return ReIDDataset(dataset.train, dataset.query, dataset.gallery, name=dataset.name,
                           notes=[f"from {root}"] + dataset.notes)
    if mode == "none":
        return ReIDDataset(dataset.train, [], [], name=dataset.name, notes=["none"] + dataset.notes)
    carved = carve_validation_records(dataset.train, options.val_ids, options.split_seed)
    return ReIDDataset(carved.train, carved.query, carved.gallery, name=f"{dataset.name} (val carve-out)",
                       notes=[f"carved from the training ids (split seed {options.split_seed})"] + dataset.notes)


def describe_split(splits: ReIDDataset) -> str:
    """One console line: e.g. "train 617 ids / 6,000 images; validation: 150 ids from data/cuhk03-val (query 300,
    gallery 1,200)"."""
    def ids(records: list) -> int:  # identities; pid 0 marks distractor images
        return len({r.pid for r in records if r.pid != 0})

    line = f"train {ids(splits.train):,} ids / {len(splits.train):,} images; validation: "
    if not splits.query:
        return line + "none"
    return line + (f"{ids(splits.query + splits.gallery):,} ids {splits.notes[0]} (query {len(splits.query):,}, "
                   f"gallery {len(splits.gallery):,})")
