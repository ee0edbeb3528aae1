"""`find`: where was this person seen? Rank the TRACKLETS of a `track` run for one or more query crops.

    sightings = find("runs/site", ["person.jpg"], extractor, top=10, picture="found.png")

Several query crops of one person are averaged into one feature (then L2-normalised), which is steadier than any
single crop. Each result is one tracklet (a person's passage through one camera): global id, camera, time span,
frames, cosine distance and its best crop. The picture is the project's one ranked-list drawing
(`search.picture.ranked_list_picture` -> `metrics.plots.draw_ranked_lists`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReIDError
from .outputs import load_identities


@dataclass
class Sighting:
    rank: int
    gid: int
    camera: str
    track: int
    start: float
    end: float
    first_frame: int      # 1-based, as in tracks.txt
    last_frame: int
    best_frame: int | None
    frame_file: str | None  # the frame image of a frame-folder source
    distance: float       # cosine distance of the query feature to the tracklet feature
    crop: str | None      # absolute path of the tracklet's best crop

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _tracklet_index(document: dict[str, Any]) -> dict[tuple[str, int], tuple[int, dict[str, Any]]]:
    """(camera, track) -> (global id, tracklet entry) from identities.json."""
    out = {}
    for gid, entry in document["identities"].items():
        for camera, tracklets in entry["cameras"].items():
            for t in tracklets:
                out[(camera, int(t["track"]))] = (int(gid), t)
    return out


def query_feature(extractor: Any, queries: Sequence[Any]) -> np.ndarray:
    """(1, D): the L2-normalised mean of the queries' embeddings (paths, PIL images or RGB arrays)."""
    if not queries:
        raise ReIDError("find: no query image given")
    feats = np.asarray(extractor.embed(list(queries)), np.float64)
    mean = feats.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)[None]


def find(run: str | os.PathLike, queries: Sequence[Any], extractor: Any, top: int = 10,
         picture: str | os.PathLike | None = None) -> list[Sighting]:
    """The `top` tracklets of run `run` closest to the person in `queries`; optionally a ranked-list picture."""
    from ..search.index import GalleryIndex

    run = Path(run)
    if top < 1:
        raise ReIDError(f"--top {top}: must be >= 1")
    document = load_identities(run)
    if not (run / "gallery" / "index.json").is_file():
        raise ReIDError(f"--in {run}: no gallery/ index (not a `reidkit track` output folder?)")
    index = GalleryIndex.load(run / "gallery")
    if index.count == 0:
        raise ReIDError(f"--in {run}: the run found nobody (its gallery is empty), so there is nothing to rank")
    index.check_extractor(extractor)
    results = index.search(query_feature(extractor, queries), k=min(top, index.count), method="exact")
    hits = results.hits(0)
    known = _tracklet_index(document)
    sightings = []
    for hit in hits:
        camera, track = hit["source"], int(hit["track"])
        gid, entry = known.get((camera, track), (int(hit["pid"]), {}))
        sightings.append(Sighting(hit["rank"], gid, camera, track, float(entry.get("start", hit["time"] or 0.0)),
                                  float(entry.get("end", hit["time"] or 0.0)), int(entry.get("first_frame", 0)),
                                  int(entry.get("last_frame", 0)), entry.get("best_frame"),
                                  entry.get("best_frame_file"), round(1.0 - float(hit["score"]), 6), hit["path"]))
    if picture is not None:
        from ..search.picture import ranked_list_picture

        for hit, s in zip(hits, sightings):
            hit["pid"] = None  # the query's identity is unknown: grey frames, not a false red
            hit["rank"] = f"{s.rank} id {s.gid} {s.camera}"
        ranked_list_picture([queries[0]], [hits], picture,
                            title=f"find: top-{len(hits)} tracklets of {run.name} for "
                                  f"{len(queries)} query crop(s) (score = cosine similarity)")
    return sightings


def format_table(sightings: Sequence[Sighting]) -> str:
    lines = [f"{'rank':>4s} {'id':>5s} {'camera':12s} {'time span (s)':>17s} {'frames':>13s} {'dist':>6s}  crop"]
    for s in sightings:
        span = f"{s.start:7.1f}-{s.end:<7.1f}"
        frames = f"{s.first_frame}-{s.last_frame}"
        where = s.crop or "-"
        if s.frame_file:
            where += f"  (frame {s.frame_file})"
        lines.append(f"{s.rank:4d} {s.gid:5d} {s.camera[:12]:12s} {span:>17s} {frames:>13s} {s.distance:6.3f}  "
                     f"{where}")
    return "\n".join(lines)
