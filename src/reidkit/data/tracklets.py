"""Tracklets (image sequences of one person in one camera): the record, the layouts that hold them, clip sampling.

A `Tracklet` is (pid, camid, ordered frame paths, optional track/sequence key). Loaders return a
`TrackletDataset` (train / query / gallery lists of tracklets):

- MARS: `bbox_train/`, `bbox_test/` (`PPPP/PPPPCcTttttFfff.jpg`), `info/{train,test}_name.txt`,
  `info/tracks_{train,test}_info.mat` (start, end, pid, camid; 1-based), `info/query_IDX.mat`. Query = the listed
  test tracks, gallery = every other test track (as torchreid).
- iLIDS-VID: `i-LIDS-VID/sequences/cam1|cam2/personNNN/*.png`. Random 50/50 identity split (seed); query = the
  test identities' cam1 sequences, gallery = their cam2 sequences.
- PRID-2011: `multi_shot/cam_a|cam_b/person_NNNN/*.png`. People seen by both cameras with >= `min_frames`
  frames, random 50/50 split; query = cam_a, gallery = cam_b.
- `reidkit track` run: `RUN/crops/{gid:04d}_c{camera}_t{track:05d}_f{frame:06d}.jpg`, grouped by (global id,
  camera, track); pooled protocol.
- Market layout: `query/`, `bounding_box_test/` (+ `bounding_box_train/`), images grouped by (pid, camera[,
  Market sequence `sN`]) per folder ("split" protocol) or with both folders pooled ("pooled").
- manifest: CSV/JSON rows path,pid,camid,track[,split][,frame], grouped by (split, camid, track).

"pooled" protocol: query and gallery images together, grouped by (pid, camera[, sequence]); every tracklet is a
query against all the others; the same-pid same-camera ones are removed by the MARS/Market evaluation, so each
query is matched across cameras only. This is the fair tracklet protocol on a validation carve whose query/ holds
one image per (pid, camera): "split" would give one-frame query tracklets.

Nothing is dropped silently: junk tracks (pid -1), tracks below a minimum length and identities seen by one
camera only are counted in `notes`; empty tracklets, missing frames and a tracklet spanning two identities raise
DataError naming the tracklet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import is_image_name
from .market import load_market, scan_image_folder
from .records import Record, ReIDDataset

PROTOCOLS = ("split", "pooled")
SPLIT_NAMES = ("train", "query", "gallery")


@dataclass(frozen=True)
class Tracklet:
    """One person in one camera over time: frame paths in temporal order (at least one)."""

    pid: int
    camid: int
    paths: tuple[str, ...]
    key: str | None = None  # track / sequence key within (pid, camid), e.g. "s3", "T0004", "t00012"

    def __post_init__(self) -> None:
        if not self.paths:
            raise DataError(f"empty tracklet: pid {self.pid}, camera {self.camid}"
                            + (f", track {self.key}" if self.key is not None else "") + " has no frames")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def name(self) -> str:
        """How messages name it: pid, camera, key and first frame."""
        key = f" track {self.key}" if self.key is not None else ""
        return f"tracklet (pid {self.pid}, camera {self.camid}{key}, first frame {self.paths[0]})"


@dataclass
class TrackletDataset:
    train: list[Tracklet] = field(default_factory=list)
    query: list[Tracklet] = field(default_factory=list)
    gallery: list[Tracklet] = field(default_factory=list)
    name: str = "tracklets"
    protocol: str = "split"  # "pooled": query and gallery are the same tracklets (every one against the others)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rows = []
        for split in SPLIT_NAMES:
            items = getattr(self, split)
            frames = sum(len(t) for t in items)
            rows.append(f"{split:8s} {len(items):7d} tracklets {frames:8d} frames {len({t.pid for t in items}):6d} "
                        f"ids {len({t.camid for t in items}):3d} cameras")
        rows += [f"note: {note}" for note in self.notes]
        return f"{self.name} ({self.protocol} protocol)\n" + "\n".join(rows)


def tracklet_arrays(tracklets: Sequence[Tracklet]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(all frame paths in tracklet order, pids, camids, offsets): tracklet i owns frames offsets[i]:offsets[i+1]."""
    paths = [p for t in tracklets for p in t.paths]
    pids = np.asarray([t.pid for t in tracklets], dtype=np.int64)
    camids = np.asarray([t.camid for t in tracklets], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tracklets])]).astype(np.int64)
    return paths, pids, camids, offsets


def check_frames_exist(tracklets: Iterable[Tracklet], where: str) -> None:
    """DataError listing tracklets with frames missing on disk (a silent drop would change the tracklet)."""
    missing = [(t, p) for t in tracklets for p in t.paths if not os.path.isfile(p)]
    if missing:
        shown = "; ".join(f"{p} of {t.name}" for t, p in missing[:5])
        more = f" ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{where}: {len(missing)} frame(s) missing on disk: {shown}{more}")


# ------------------------------------------------------------------------------------------------ grouping
_SEQUENCE_RE = re.compile(r"^[-\d]+_c\d+s(\d+)_")  # Market-1501: 0002_c1s1_000451_03.jpg -> sequence 1


def group_records(records: Sequence[Record], by_sequence: bool = True) -> list[Tracklet]:
    """Tracklets from image records grouped by (pid, camera[, Market sequence sN]); frames ordered by frame
    number when known, else by file name. Order: by (pid, camera, key). Distractor images (pid 0) are different
    people: each is a one-frame tracklet of its own."""
    groups: dict[tuple[int, int, str | None], list[Record]] = {}
    for r in records:
        if r.pid == 0:  # distractors are different people: one one-frame tracklet each
            groups[(0, r.camid, os.path.basename(r.path))] = [r]
            continue
        match = _SEQUENCE_RE.match(os.path.basename(r.path)) if by_sequence else None
        groups.setdefault((r.pid, r.camid, f"s{match.group(1)}" if match else None), []).append(r)
    out = []
    for (pid, camid, key), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        members = sorted(members, key=lambda r: (r.frame if r.frame is not None else -1, os.path.basename(r.path)))
        out.append(Tracklet(pid, camid, tuple(r.path for r in members), key))
    return out


def tracklets_from_images(dataset: ReIDDataset, protocol: str = "split", by_sequence: bool = True) -> TrackletDataset:
    """Group a Market-layout / manifest image dataset into tracklets (see the module docstring for protocols)."""
    _check_protocol(protocol)
    train = group_records(dataset.train, by_sequence)
    notes = list(dataset.notes)
    if protocol == "pooled":
        return pooled_dataset(train, group_records(dataset.query + dataset.gallery, by_sequence), dataset.name,
                              notes)
    query, gallery = group_records(dataset.query, by_sequence), group_records(dataset.gallery, by_sequence)
    singles = sum(len(t) == 1 for t in query)
    if query and singles == len(query):
        notes.append(f"every query tracklet has one frame ({len(query)} of {len(query)}): query/ holds one image "
                     "per identity and camera; the pooled protocol groups query/ and bounding_box_test/ together")
    return TrackletDataset(train, query, gallery, dataset.name, "split", notes)


def pooled_dataset(train: list[Tracklet], pooled: list[Tracklet], name: str, notes: list[str]) -> TrackletDataset:
    """Every tracklet queries all the others; distractor tracklets (pid 0) stay in the gallery only."""
    query = [t for t in pooled if t.pid != 0]
    if len(query) < len(pooled):
        notes.append(f"{len(pooled) - len(query)} distractor tracklet(s) (pid 0) are gallery only")
    return TrackletDataset(train, query if len(query) < len(pooled) else pooled, pooled, name, "pooled", notes)


def load_market_tracklets(root: str | os.PathLike, protocol: str = "split", by_sequence: bool = True
                          ) -> TrackletDataset:
    return tracklets_from_images(load_market(root), protocol, by_sequence)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise DataError(f"tracklet protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


# --------------------------------------------------------------------------------------------------- MARS
def _loadmat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat  # scipy is a dependency; loaded only for MARS

    if not path.is_file():
        raise DataError(f"MARS layout: missing {path}")
    try:
        data = loadmat(str(path))
    except (OSError, ValueError, NotImplementedError) as exc:
        raise DataError(f"MARS layout: {path} is not a readable .mat file ({exc})") from None
    if key not in data:
        found = ", ".join(k for k in data if not k.startswith("__"))
        raise DataError(f"MARS layout: {path} has no {key!r} array (found: {found or 'none'})")
    return np.asarray(data[key])


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"MARS layout: missing {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


_MARS_NAME_RE = re.compile(r"^(\d{4}|00-1)C(\d)T(\d{4})F(\d{3})")


def _mars_tracks(root: Path, split: str, info: np.ndarray, names: list[str], rows: np.ndarray,
                 notes: list[str], min_len: int) -> list[Tracklet]:
    """Tracklets of `rows` of a tracks_*_info array (columns start, end, pid, camid; 1-based, inclusive)."""
    folder = root / ("bbox_train" if split == "train" else "bbox_test")
    out: list[Tracklet] = []
    junk = short = 0
    for row in rows:
        start, end, pid, cam = (int(v) for v in info[row, :4])
        if pid == -1:
            junk += 1
            continue
        if not 1 <= start <= end <= len(names):
            raise DataError(f"MARS layout: track {row + 1} of {split} spans names {start}..{end}, outside the "
                            f"{len(names)} names listed")
        frames = names[start - 1:end]
        where = f"MARS {split} track {row + 1} (pid {pid}, camera {cam})"
        for name in frames:  # every frame must carry the track's identity and camera
            match = _MARS_NAME_RE.match(name)
            if match is None:
                raise DataError(f"{where}: frame name {name} does not parse (expected PPPPCcTttttFfff.jpg)")
            if int(match.group(1).replace("00-1", "-1")) != pid or int(match.group(2)) != cam:
                raise DataError(f"{where}: frame {name} belongs to pid {match.group(1)}, camera {match.group(2)}: "
                                "the tracklet spans two identities or cameras")
        if len(frames) < min_len:
            short += 1
            continue
        key = _MARS_NAME_RE.match(frames[0]).group(3)
        out.append(Tracklet(pid, cam - 1, tuple(str(folder / n[:4] / n) for n in frames), f"T{key}"))
    if junk:
        notes.append(f"MARS {split}: skipped {junk} junk track(s) (pid -1), as the MARS protocol does")
    if short:
        notes.append(f"MARS {split}: skipped {short} track(s) shorter than {min_len} frames")
    return out


def load_mars(root: str | os.PathLike, min_len: int = 0, check_files: bool = True) -> TrackletDataset:
    """The MARS layout (Zheng et al. 2016), read as torchreid does: query tracks from `query_IDX`, gallery = every
    other test track; camid 0-based; pid 0 tracks (distractors) stay in the gallery."""
    root = Path(root)
    info = root / "info"
    train_names, test_names = _read_names(info / "train_name.txt"), _read_names(info / "test_name.txt")
    train_info = _loadmat(info / "tracks_train_info.mat", "track_train_info")
    test_info = _loadmat(info / "tracks_test_info.mat", "track_test_info")
    query_idx = _loadmat(info / "query_IDX.mat", "query_IDX").ravel().astype(np.int64) - 1
    for name, arr in (("tracks_train_info", train_info), ("tracks_test_info", test_info)):
        if arr.ndim != 2 or arr.shape[1] < 4:
            raise DataError(f"MARS layout: {name} must be an (N, 4) array of start, end, pid, camid; got "
                            f"shape {arr.shape}")
    if query_idx.size and (query_idx.min() < 0 or query_idx.max() >= len(test_info)):
        raise DataError(f"MARS layout: query_IDX indexes tracks 1..{len(test_info)}, got "
                        f"{query_idx.min() + 1}..{query_idx.max() + 1}")
    notes: list[str] = []
    gallery_rows = np.setdiff1d(np.arange(len(test_info)), query_idx)
    dataset = TrackletDataset(
        train=_mars_tracks(root, "train", train_info, train_names, np.arange(len(train_info)), notes, min_len),
        query=_mars_tracks(root, "query", test_info, test_names, query_idx, notes, min_len),
        gallery=_mars_tracks(root, "gallery", test_info, test_names, gallery_rows, notes, min_len),
        name=root.name, notes=notes)
    if check_files:
        check_frames_exist(dataset.train + dataset.query + dataset.gallery, f"MARS {root}")
    return dataset


def is_mars_root(path: Path) -> bool:
    return (path / "info" / "tracks_test_info.mat").is_file()


# ---------------------------------------------------------------------------------------- iLIDS-VID / PRID
def _sequence_folders(cam_dir: Path, prefix: str) -> dict[int, list[str]]:
    """{pid: sorted frame paths} of `cam_dir/<prefix>NNN/`; an empty person folder is an error."""
    if not cam_dir.is_dir():
        raise DataError(f"missing folder {cam_dir}")
    out: dict[int, list[str]] = {}
    for entry in sorted(os.scandir(cam_dir), key=lambda e: e.name):
        if not entry.is_dir() or not entry.name.startswith(prefix):
            continue
        try:
            pid = int(entry.name[len(prefix):])
        except ValueError:
            raise DataError(f"{entry.path}: expected a folder named {prefix}<number>") from None
        frames = sorted(e.path for e in os.scandir(entry.path) if e.is_file() and is_image_name(e.name))
        if not frames:
            raise DataError(f"empty tracklet: {entry.path} holds no images")
        out[pid] = frames
    return out


def _two_camera_split(name: str, cams: tuple[dict[int, list[str]], dict[int, list[str]]], seed: int,
                      min_frames: int, notes: list[str]) -> TrackletDataset:
    """The iLIDS-VID / PRID protocol: identities in both cameras, random 50/50 train/test split by `seed`;
    query = first camera's test tracklets, gallery = second camera's."""
    both = sorted(set(cams[0]) & set(cams[1]))
    only = len(set(cams[0]) ^ set(cams[1]))
    if only:
        notes.append(f"{name}: {only} identit(y/ies) seen by one camera only are not used (the protocol needs "
                     "both cameras)")
    kept = [pid for pid in both if min(len(cams[0][pid]), len(cams[1][pid])) >= min_frames]
    if len(kept) < len(both):
        notes.append(f"{name}: {len(both) - len(kept)} identit(y/ies) with a sequence shorter than {min_frames} "
                     "frames are not used")
    if len(kept) < 2:
        raise DataError(f"{name}: {len(kept)} identit(y/ies) with sequences in both cameras; need at least 2")
    rng = np.random.default_rng(seed)
    test = set(rng.permutation(kept)[: len(kept) // 2].tolist())
    train = [pid for pid in kept if pid not in test]

    def tracks(pids: Iterable[int], cam: int) -> list[Tracklet]:
        return [Tracklet(pid, cam, tuple(cams[cam][pid])) for pid in sorted(pids)]

    notes.append(f"{name}: split seed {seed}: {len(train)} train / {len(test)} test identities")
    return TrackletDataset(train=tracks(train, 0) + tracks(train, 1), query=tracks(test, 0),
                           gallery=tracks(test, 1), name=name, notes=notes)


def _find(root: Path, candidates: Sequence[str]) -> Path | None:
    return next((root / c for c in candidates if (root / c).is_dir()), None)


def load_ilids_vid(root: str | os.PathLike, seed: int = 0, min_frames: int = 0) -> TrackletDataset:
    """iLIDS-VID (Wang et al. 2014): 300 people, one sequence per camera; 150/150 split by `seed`."""
    root = Path(root)
    seq = _find(root, ("i-LIDS-VID/sequences", "sequences", "."))
    if seq is None or not (seq / "cam1").is_dir():
        raise DataError(f"{root}: not an iLIDS-VID layout (expected i-LIDS-VID/sequences/cam1|cam2/personNNN/)")
    cams = (_sequence_folders(seq / "cam1", "person"), _sequence_folders(seq / "cam2", "person"))
    return _two_camera_split(root.name, cams, seed, min_frames, [])


def load_prid2011(root: str | os.PathLike, seed: int = 0, min_frames: int = 21) -> TrackletDataset:
    """PRID-2011 multi-shot (Hirzer et al. 2011): the people in both cameras with >= `min_frames` frames per
    sequence (21: the 178 people of the usual protocol, Wang et al. 2014), split 50/50 by `seed`."""
    root = Path(root)
    shot = _find(root, ("prid_2011/multi_shot", "multi_shot", "."))
    if shot is None or not (shot / "cam_a").is_dir():
        raise DataError(f"{root}: not a PRID-2011 layout (expected multi_shot/cam_a|cam_b/person_NNNN/)")
    cams = (_sequence_folders(shot / "cam_a", "person_"), _sequence_folders(shot / "cam_b", "person_"))
    return _two_camera_split(root.name, cams, seed, min_frames, [])


# ------------------------------------------------------------------------------------ `reidkit track` runs
_CROP_RE = re.compile(r"^(\d+)_c(\d+)_t(\d+)_f(\d+)\.(jpe?g|png)$", re.IGNORECASE)


def load_track_run(run: str | os.PathLike) -> TrackletDataset:
    """Crops written by `reidkit track` (RUN/crops/{gid:04d}_c{camera}_t{track:05d}_f{frame:06d}.jpg, camera
    1-based), grouped by (global id, camera, track) in frame order; camid = camera - 1 (as `parse_market_name`).
    Pooled protocol; global id 0 (not associated) is gallery only. `reidkit track` currently writes the best crop
    of each tracklet, so its tracklets have one frame unless more crops of a track are present."""
    run = Path(run)
    crops = run / "crops" if (run / "crops").is_dir() else run
    groups: dict[tuple[int, int, int], list[tuple[int, str]]] = {}
    ignored = []
    for entry in sorted(os.scandir(crops), key=lambda e: e.name):
        match = _CROP_RE.match(entry.name)
        if not entry.is_file() or match is None:
            ignored.append(entry.name)
            continue
        gid, cam, track, frame = (int(match.group(i)) for i in range(1, 5))
        if cam < 1:
            raise DataError(f"{entry.path}: camera numbers in crop names start at 1, got c{cam}")
        groups.setdefault((gid, cam - 1, track), []).append((frame, entry.path))
    if not groups:
        raise DataError(f"{crops}: no crops named GID_cCAM_tTRACK_fFRAME.jpg (the output of `reidkit track`)")
    tracklets = [Tracklet(gid, cam, tuple(p for _, p in sorted(frames)), f"t{track:05d}")
                 for (gid, cam, track), frames in sorted(groups.items())]
    notes = [f"{crops}: ignored {len(ignored)} entr(y/ies) not named like a crop: {', '.join(ignored[:5])}"] \
        if ignored else []
    return pooled_dataset([], tracklets, run.name, notes)


# ------------------------------------------------------------------------------------------------ manifests
def load_tracklet_manifest(path: str | os.PathLike, protocol: str = "split") -> TrackletDataset:
    """A CSV/JSON manifest (data/manifest.py rows) with a `track` column: rows grouped by (split, camid, track),
    frames ordered by `frame` (else by row). A track whose rows name two identities is refused; without a
    `track` column the rows are grouped by (pid, camid) like a Market folder."""
    from .manifest import _csv_rows, _json_rows, _parse_row, load_manifest

    _check_protocol(protocol)
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig") if path.is_file() else None
    if text is None:
        raise DataError(f"manifest {path}: file not found")
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _json_rows(path, text)
    if not any(str(row.get("track") or "").strip() for _, row, _ in rows):
        return tracklets_from_images(load_manifest(path), protocol, by_sequence=False)
    groups: dict[tuple[str, int, str], list[tuple[int, int, Record, str]]] = {}
    junk = 0
    for order, (where, row, default_split) in enumerate(rows):
        track = str(row.get("track") or "").strip()
        if not track:
            raise DataError(f"{where}: missing value for track (every row of a tracklet manifest needs one)")
        split, record = _parse_row(row, path.parent, where, default_split)
        if record is None:
            junk += 1
            continue
        groups.setdefault((split, record.camid, track), []).append(
            (record.frame if record.frame is not None else order, order, record, where))
    dataset = TrackletDataset(name=path.stem, protocol=protocol)
    for (split, camid, track), members in sorted(groups.items()):
        pids = sorted({m[2].pid for m in members})
        if len(pids) > 1:
            rows_shown = "; ".join(f"{m[3].split(' ', 2)[-1]}: pid {m[2].pid}" for m in members[:4])
            raise DataError(f"manifest {path}: track {track!r} (camera {camid}, {split}) spans {len(pids)} "
                            f"identities {pids} ({rows_shown}): a tracklet shows one person")
        members.sort(key=lambda m: (m[0], m[1]))
        getattr(dataset, split).append(Tracklet(pids[0], camid, tuple(m[2].path for m in members), track))
    if junk:
        dataset.notes.append(f"manifest {path}: dropped {junk} junk row(s) (pid -1)")
    check_frames_exist(dataset.train + dataset.query + dataset.gallery, f"manifest {path}")
    if protocol == "pooled":
        pooled = sorted(dataset.query + dataset.gallery, key=lambda t: (t.pid, t.camid))
        return pooled_dataset(dataset.train, pooled, dataset.name, dataset.notes)
    return dataset


# ------------------------------------------------------------------------------------------------- dispatch
def load_tracklets(path: str | os.PathLike, protocol: str = "split", seed: int = 0) -> TrackletDataset:
    """Load tracklets by what `path` holds: MARS, iLIDS-VID, PRID-2011, a `reidkit track` run, a (tracklet)
    manifest or a Market layout (grouped by identity and camera; `protocol` split or pooled). `seed` picks the
    iLIDS-VID / PRID identity split."""
    _check_protocol(protocol)
    path = Path(path)
    if path.is_file():
        return load_tracklet_manifest(path, protocol)
    if not path.is_dir():
        raise DataError(f"missing dataset {path}: no such file or folder")
    if is_mars_root(path):
        return load_mars(path)
    if _find(path, ("i-LIDS-VID/sequences", "sequences")) is not None or (path / "cam1").is_dir():
        return load_ilids_vid(path, seed)
    if _find(path, ("prid_2011/multi_shot", "multi_shot")) is not None or (path / "cam_a").is_dir():
        return load_prid2011(path, seed)
    crops = path / "crops" if (path / "crops").is_dir() else path
    if any(_CROP_RE.match(e.name) for e in os.scandir(crops)):
        return load_track_run(path)
    if any((path / sub).is_dir() for sub in ("query", "bounding_box_test", "bounding_box_train")):
        return load_market_tracklets(path, protocol)
    scan = scan_image_folder(path)  # a single folder of Market-named images: every tracklet against the others
    tracklets = group_records(scan.records)
    if not tracklets:
        raise DataError(f"{path}: no tracklet layout recognised (MARS, iLIDS-VID, PRID-2011, `reidkit track` "
                        "crops, manifest, Market layout) and no Market-named images")
    return pooled_dataset([], tracklets, path.name, scan.notes())


# ------------------------------------------------------------------------------------------ clip sampling
def restricted_random_sample(lengths: np.ndarray | Sequence[int], clip_len: int,
                             rng: np.random.Generator) -> np.ndarray:
    """Restricted random sampling (Li et al., CVPR 2018): split each tracklet of `lengths[i]` frames into
    `clip_len` equal chunks and draw one frame uniformly from each; (len(lengths), clip_len) frame indices,
    non-decreasing along a row. A tracklet shorter than `clip_len` repeats frames (chunk t of an n-frame
    tracklet is then frame floor(t n / clip_len)), so every frame appears."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if clip_len < 1:
        raise DataError(f"clip_len={clip_len}: must be >= 1")
    if lengths.size and lengths.min() < 1:
        raise DataError(f"restricted_random_sample: tracklet {int(np.argmin(lengths))} has no frames")
    t = np.arange(clip_len + 1)
    bounds = (lengths[:, None] * t[None, :]) // clip_len  # (B, T + 1) chunk boundaries
    start, size = bounds[:, :-1], np.diff(bounds, axis=1)
    offset = np.floor(rng.random(start.shape) * np.maximum(size, 1)).astype(np.int64)
    return np.minimum(start + offset, lengths[:, None] - 1)


# ------------------------------------------------------------------------------------------------ synthetic
def synthetic_tracklets(out: str | os.PathLike, cfg=None, protocol: str = "pooled",
                        show_progress: bool = False) -> TrackletDataset:
    """Synthetic tracklets for tests and demos: `reidkit.data.synth` pedestrians written to `out` (Market layout,
    cached by config) and grouped by identity and camera; each (identity, camera) holds `images_per_camera`
    renderings of that person in that camera."""
    from .synth import SynthConfig, generate_market_dataset

    root = generate_market_dataset(out, cfg or SynthConfig(), show_progress=show_progress)
    return load_market_tracklets(root, protocol)
