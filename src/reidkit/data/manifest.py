"""Manifest files for custom datasets: CSV or JSON rows of (path, pid, camid[, split][, frame][, attr_<name>...]).

- CSV: a header with at least ``path,pid,camid``; optional ``split`` (train/query/gallery) and ``frame``.
- Attribute labels (ACRN, docs/models.md): columns ``attr_<name>`` holding 0 or 1 (JSON: also true/false), the
  same columns on every row; they become ``Record.attributes``. A missing value, another value, or a row with
  other attribute columns than the first row is a DataError naming the manifest, the row and the column.
- JSON: a list of row objects, or ``{"train": [...], "query": [...], "gallery": [...]}``.
- Relative paths are resolved against the manifest's folder. Without a split, rows are training images.
- camid is taken as written (use 0-based ids, as the Market loader produces). pid -1 rows are junk: dropped
  and counted in ``dataset.notes``; pid 0 is a distractor.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..utils import atomic_write_text
from .images import raise_if_bad_images
from .market import finish_dataset
from .records import SPLITS, Record, ReIDDataset

REQUIRED_COLUMNS = ("path", "pid", "camid")
MANIFEST_COLUMNS = ("path", "pid", "camid", "split", "frame")
ATTRIBUTE_PREFIX = "attr_"
ATTRIBUTE_VALUES = {"0": 0, "1": 1, "false": 0, "true": 1}


def _as_int(value: Any, column: str, where: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: {column} must be an integer, got {value!r}")
    try:
        number = float(value) if isinstance(value, float) else int(str(value).strip())
    except (TypeError, ValueError):
        raise DataError(f"{where}: {column} must be an integer, got {value!r}") from None
    if isinstance(number, float) and not number.is_integer():
        raise DataError(f"{where}: {column} must be an integer, got {value!r}")
    return int(number)


def _attribute_value(value: Any, column: str, where: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: missing value for attribute column {column} (expected 0 or 1)")
    key = str(value).strip().lower() if not isinstance(value, float) or not value.is_integer() else str(int(value))
    if key not in ATTRIBUTE_VALUES:
        raise DataError(f"{where}: unknown value {value!r} in attribute column {column} (expected 0 or 1)")
    return ATTRIBUTE_VALUES[key]


def _parse_attributes(row: dict[str, Any], where: str) -> tuple[tuple[str, int], ...]:
    """(name, 0/1) pairs of the row's attr_<name> columns, sorted by name."""
    if None in row:  # csv.DictReader puts fields beyond the header under the key None
        raise DataError(f"{where}: {len(row[None])} field(s) more than the header's columns")
    columns = sorted(c for c in row if isinstance(c, str) and c.startswith(ATTRIBUTE_PREFIX))
    return tuple((c[len(ATTRIBUTE_PREFIX):], _attribute_value(row[c], c, where)) for c in columns)


def _check_attribute_columns(where: str, record: Record, first: tuple[str, str] | None) -> tuple[str, str]:
    """Every row must have the attribute columns of the first row (JSON rows can differ; CSV rows share a header).
    `first` is (where, names) of the first row."""
    names = ",".join(n for n, _ in record.attributes)
    if first is None:
        return where, names
    if names != first[1]:
        have, want = set(names.split(",")) - {""}, set(first[1].split(",")) - {""}
        detail = "; ".join(part for part in (
            f"missing {', '.join(ATTRIBUTE_PREFIX + n for n in sorted(want - have))}" if want - have else "",
            f"extra {', '.join(ATTRIBUTE_PREFIX + n for n in sorted(have - want))}" if have - want else "") if part)
        raise DataError(f"{where}: {len(have)} attribute column(s) where {first[0]} has {len(want)} ({detail})")
    return first


def _parse_row(row: dict[str, Any], base: Path, where: str, default_split: str) -> tuple[str, Record | None]:
    """(split, record) for one row; the record is None for junk (pid -1)."""
    attributes = _parse_attributes(row, where)
    missing = [c for c in REQUIRED_COLUMNS if row.get(c) in (None, "")]
    if missing:
        raise DataError(f"{where}: missing value for {', '.join(missing)}")
    split = str(row.get("split") or default_split).strip().lower()
    if split not in SPLITS:
        raise DataError(f"{where}: split must be one of {', '.join(SPLITS)}, got {row.get('split')!r}")
    pid = _as_int(row["pid"], "pid", where)
    camid = _as_int(row["camid"], "camid", where)
    if pid < -1 or camid < 0:
        raise DataError(f"{where}: pid must be >= -1 and camid >= 0, got pid={pid} camid={camid}")
    frame = row.get("frame")
    frame = None if frame in (None, "") else _as_int(frame, "frame", where)
    path = Path(str(row["path"]).strip())
    path = os.path.normpath(path if path.is_absolute() else base / path)
    return split, (None if pid == -1 else Record(path, pid, camid, frame, attributes))


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any], str]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"manifest {path}: header must have columns {', '.join(REQUIRED_COLUMNS)}; "
                        f"missing {', '.join(missing)} (header: {','.join(header) or 'none'})")
    reader.fieldnames = header
    # Line numbers count the header as line 1, so they match what an editor shows.
    return [(f"manifest {path} line {reader.line_num}", row, "train") for row in reader]


def _json_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any], str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"manifest {path}: invalid JSON: {exc}") from None
    if isinstance(data, list):
        groups = [("", data, "train")]
    elif isinstance(data, dict) and data and set(data) <= set(SPLITS):
        groups = [(split, rows, split) for split, rows in data.items()]
    else:
        raise DataError(f"manifest {path}: expected a list of rows or an object with keys "
                        f"{'/'.join(SPLITS)}, got {type(data).__name__}"
                        + (f" with keys {sorted(data)}" if isinstance(data, dict) else ""))
    rows = []
    for prefix, items, split in groups:
        if not isinstance(items, list):
            raise DataError(f"manifest {path}: {prefix} must be a list of rows")
        for i, item in enumerate(items):
            where = f"manifest {path} item {prefix}[{i}]"
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected an object with path, pid, camid, got {item!r}")
            if prefix and item.get("split") not in (None, "", prefix):
                raise DataError(f"{where}: split {item['split']!r} contradicts the {prefix!r} list it is in")
            rows.append((where, item, split))
    return rows


def _check_splits(path: Path, dataset: ReIDDataset, num_junk: int) -> None:
    if not (dataset.train or dataset.query or dataset.gallery):
        detail = f" (only {num_junk} junk rows)" if num_junk else ""
        raise DataError(f"empty split: manifest {path} has no images{detail}")
    if bool(dataset.query) != bool(dataset.gallery):
        empty = "gallery" if dataset.query else "query"
        raise DataError(f"empty split: manifest {path} has no {empty} rows but has "
                        f"{'query' if empty == 'gallery' else 'gallery'} rows")


def _refuse_repeated_paths(path: Path, seen: dict[str, list[str]]) -> None:
    """One image on two rows is a duplicate, two identities or a query that is its own gallery match (which
    inflates rank-1): all refused, since no choice between the rows is safe."""
    repeated = [(p, rows) for p, rows in seen.items() if len(rows) > 1]
    if repeated:
        shown = "; ".join(f"{p}: {', '.join(rows)}" for p, rows in repeated[:5])
        more = f" ... and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise DataError(f"manifest {path}: {len(repeated)} image(s) listed on more than one row "
                        f"(duplicate, two identities, or both query and gallery): {shown}{more}")


def _check_files_exist(path: Path, dataset: ReIDDataset) -> None:
    missing = [r.path for split in SPLITS for r in getattr(dataset, split) if not os.path.isfile(r.path)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"manifest {path}: {len(missing)} listed image(s) do not exist: {shown}")


def load_manifest(path: str | os.PathLike, verify: bool = False) -> ReIDDataset:
    """Load a CSV/JSON manifest; every listed file must exist (`verify` also decodes each image)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read manifest {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise DataError(f"manifest {path}: unknown format {suffix!r}; use .csv or .json")
    rows = _csv_rows(path, text) if suffix == ".csv" else _json_rows(path, text)
    dataset = ReIDDataset(name=path.stem)
    num_junk = 0
    seen: dict[str, list[str]] = {}
    first_attributes = None
    for where, row, default_split in rows:
        split, record = _parse_row(row, path.parent, where, default_split)
        if record is not None:
            first_attributes = _check_attribute_columns(where, record, first_attributes)
        if record is None:
            num_junk += 1
        else:
            getattr(dataset, split).append(record)
            row_name = where.removeprefix(f"manifest {path} ")  # "line 3" / "item query[0]"
            seen.setdefault(record.path, []).append(f"{row_name} ({split}, pid {record.pid})")
    _refuse_repeated_paths(path, seen)
    _check_splits(path, dataset, num_junk)
    _check_files_exist(path, dataset)
    if verify:
        raise_if_bad_images(dataset.train + dataset.query + dataset.gallery, f"manifest {path}")
    notes = [f"manifest {path}: dropped {num_junk} junk row(s) (pid -1)"] if num_junk else []
    return finish_dataset(dataset, notes)


def manifest_csv(dataset: ReIDDataset, relative_to: str | os.PathLike | None = None) -> str:
    """CSV text with columns path,pid,camid,split,frame (+ attr_<name> when the records carry attributes); paths
    relative to `relative_to` if given."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    records = [r for split in SPLITS for r in getattr(dataset, split)]
    names = [n for n, _ in records[0].attributes] if records else []
    writer.writerow(list(MANIFEST_COLUMNS) + [ATTRIBUTE_PREFIX + n for n in names])
    for split in SPLITS:
        for r in getattr(dataset, split):
            path = os.path.relpath(r.path, relative_to) if relative_to is not None else os.path.abspath(r.path)
            labels = dict(r.attributes)
            writer.writerow([path, r.pid, r.camid, split, "" if r.frame is None else r.frame]
                            + [labels[n] for n in names])
    return buffer.getvalue()


def write_manifest(dataset: ReIDDataset, path: str | os.PathLike, relative: bool = False) -> Path:
    """Write `dataset` as a CSV manifest atomically; absolute paths unless `relative` (to the manifest)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise DataError(f"manifest {path}: output must be a .csv file")
    atomic_write_text(manifest_csv(dataset, path.parent.resolve() if relative else None), path)
    return path
