"""`reidkit.video.pipeline.track` end to end on tiny synthetic camera videos, checked against independent
references: the ground truth through motmetrics (per camera), the ground-truth identities across cameras, the
files parsed back by their own readers (MOT text, Market names, PyAV, the gallery index)."""

from __future__ import annotations

import json
from pathlib import Path

import motmetrics as mm
import numpy as np
import pytest
from PIL import Image

from reidkit.data.market import parse_market_name
from reidkit.errors import ReIDError
from reidkit.video.association import AssociationConfig
from reidkit.video.pipeline import TrackOptions, track
from reidkit.video.sources import Frame, FrameSource, open_source
from reidkit.video.tracker import TrackerConfig

COLOURS = {1: (220, 40, 40), 2: (40, 200, 40), 3: (40, 40, 220), 4: (220, 220, 40)}
SIZE = (160, 120)  # w, h


def make_camera(root: Path, name: str, people: list[tuple[int, int, int, int, int]], frames: int, fps: float,
                recolour: dict[int, tuple[int, tuple[int, int, int]]] | None = None) -> Path:
    """A MOTChallenge folder: people (id, x0, y, dx per frame, first visible frame) as 16x40 coloured boxes on a
    grey textured background; gt/gt.txt (MOT15 columns) written by hand as the reference. `recolour` {id: (frame,
    colour)}: that person looks different from that frame on (a new crop, a turn)."""
    seq = root / name
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname={name}\nimDir=img1\nframeRate={fps:g}\nseqLength={frames}\n"
                                     f"imWidth={SIZE[0]}\nimHeight={SIZE[1]}\nimExt=.png\n")
    rng = np.random.default_rng(len(name))
    background = (110 + 20 * rng.random((SIZE[1], SIZE[0], 1))).repeat(3, axis=2).astype(np.uint8)
    gt = []
    for f in range(frames):
        image = background.copy()
        for pid, x0, y, dx, first in people:
            if f < first:
                continue
            x = x0 + dx * (f - first)
            if x < 0 or x + 16 > SIZE[0]:
                continue
            change = (recolour or {}).get(pid)
            image[y:y + 40, x:x + 16] = change[1] if change and f >= change[0] else COLOURS[pid]
            gt.append(f"{f + 1},{pid},{x},{y},16,40,1,-1,-1,-1")
        Image.fromarray(image).save(seq / "img1" / f"{f + 1:06d}.png")
    (seq / "gt" / "gt.txt").write_text("\n".join(gt) + ("\n" if gt else ""))
    return seq


class GroundTruthDetector:
    """Detections = the ground-truth boxes of one camera (so the test checks tracking, association and outputs)."""

    def __init__(self, seq: Path):
        rows = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2) if (seq / "gt" / "gt.txt").stat().st_size \
            else np.zeros((0, 10))
        self.rows = rows

    def detect(self, images, frame_indices=None):
        out = []
        for index in frame_indices:
            r = self.rows[self.rows[:, 0] == index + 1]
            out.append(np.column_stack([r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5],
                                        np.full(len(r), 0.95)]).astype(np.float32))
        return out


class ColourExtractor:
    """Features = mean colour minus mid-grey: the coloured people are far apart, one person's crops identical."""

    name, backend, input_size, resize, dim = "colour", "test", (8, 4), "stretch", 3

    def embed_uint8(self, images, show_progress=False):
        x = np.asarray(images, np.float64).mean(axis=(2, 3)) - 128.0
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def embed(self, images, show_progress=False):
        arrays = [np.asarray(Image.open(i).convert("RGB")) if isinstance(i, (str, Path)) else np.asarray(i)
                  for i in images]
        return self.embed_uint8(np.stack([a.reshape(-1, 3).mean(0) for a in arrays])[:, :, None, None])


@pytest.fixture
def two_cameras(tmp_path) -> list[Path]:
    # camera a (10 fps): people 1, 2 and 3 walking right; camera b (5 fps): 2 and 3 walking left, 1 enters later
    a = make_camera(tmp_path / "seqs", "cam_a", [(1, 4, 10, 3, 0), (2, 4, 70, 2, 0), (3, 60, 40, 2, 5)], 30, 10.0)
    b = make_camera(tmp_path / "seqs", "cam_b", [(2, 140, 10, -3, 0), (3, 130, 70, -2, 0), (1, 140, 40, -4, 8)],
                    20, 5.0)
    return [a, b]


def _run(seqs, out, **kw):
    options = TrackOptions(association=AssociationConfig(threshold=0.3), **kw.pop("options", {}))
    return track([str(s) for s in seqs], out, model=ColourExtractor(),
                 detector=[GroundTruthDetector(s) for s in seqs], options=options, show_progress=False, **kw)


def _iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - IoU of x, y, w, h boxes, NaN (no match) above 0.5 -- what motmetrics' own iou_matrix computes (it calls
    np.asfarray, gone in NumPy 2)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    a1, b1 = a[:, None, :2], b[None, :, :2]
    a2, b2 = a1 + a[:, None, 2:], b1 + b[None, :, 2:]
    inter = np.prod(np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None), axis=2)
    union = np.prod(a[:, None, 2:], axis=2) + np.prod(b[None, :, 2:], axis=2) - inter
    d = 1.0 - inter / union
    return np.where(d > 0.5, np.nan, d)


def _motmetrics(gt_path: Path, pred_path: Path) -> dict:
    gt = np.loadtxt(gt_path, delimiter=",", ndmin=2)
    pred = np.loadtxt(pred_path, delimiter=",", ndmin=2) if pred_path.stat().st_size else np.zeros((0, 10))
    acc = mm.MOTAccumulator(auto_id=True)
    for frame in np.unique(np.concatenate([gt[:, 0], pred[:, 0]])):
        g, p = gt[gt[:, 0] == frame], pred[pred[:, 0] == frame]
        acc.update(g[:, 1].astype(int).tolist(), p[:, 1].astype(int).tolist(), _iou_distance(g[:, 2:6], p[:, 2:6]))
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "mota", "num_switches"], name="x")
    return summary.iloc[0].to_dict()


def test_two_cameras_against_ground_truth(two_cameras, tmp_path):
    out = tmp_path / "run"
    result = _run(two_cameras, out)
    assert not result.interrupted
    gid_of: dict[int, set[int]] = {}
    for seq in two_cameras:
        tracks = out / seq.name / "tracks.txt"
        scores = _motmetrics(seq / "gt" / "gt.txt", tracks)
        assert scores["idf1"] == pytest.approx(1.0) and scores["mota"] == pytest.approx(1.0)
        # the same person carries the same global id in both cameras: map gt ids to predicted ids by box
        gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",")
        pred = np.loadtxt(tracks, delimiter=",")
        for row in gt:
            same = pred[(pred[:, 0] == row[0]) & (np.abs(pred[:, 2:6] - row[2:6]).max(axis=1) < 0.5)]
            assert len(same) == 1
            gid_of.setdefault(int(row[1]), set()).add(int(same[0, 1]))
    assert all(len(g) == 1 for g in gid_of.values())
    assert len({next(iter(g)) for g in gid_of.values()}) == 3 == result.num_identities

    doc = json.loads((out / "identities.json").read_text())
    assert doc["complete"] is True and doc["num_identities"] == 3
    # times in seconds per camera: person 1 enters camera b (5 fps) at frame 9 -> 1.6 s
    gid1 = next(iter(gid_of[1]))
    (b_track,) = doc["identities"][str(gid1)]["cameras"]["cam_b"]
    assert b_track["start"] == pytest.approx(8 / 5.0) and b_track["first_frame"] == 9

    crops = sorted((out / "crops").glob("*.jpg"))
    assert len(crops) == result.num_tracklets == 6
    for crop in crops:
        pid, camid, frame = parse_market_name(crop.name)
        assert pid in {next(iter(g)) for g in gid_of.values()} and camid in (0, 1) and frame >= 1
        assert "_t" in crop.name

    from reidkit.search.index import GalleryIndex

    index = GalleryIndex.load(out / "gallery")
    assert index.count == 6
    assert sorted(set(index.metadata.pids.tolist())) == sorted(next(iter(g)) for g in gid_of.values())
    assert set(index.metadata.sources.tolist()) == {"cam_a", "cam_b"}

    import av

    with av.open(str(out / "cam_a" / "annotated.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 30
    assert (out / "contact_sheet.png").stat().st_size > 0 and (out / "timeline.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["complete"] is True


def test_online_mode_gives_the_same_identities(two_cameras, tmp_path):
    out = tmp_path / "run"
    result = _run(two_cameras, out, options={"online": True, "video": False})
    assert result.num_identities == 3
    for seq in two_cameras:
        assert _motmetrics(seq / "gt" / "gt.txt", out / seq.name / "tracks.txt")["idf1"] == pytest.approx(1.0)
    assert json.loads((out / "identities.json").read_text())["association"]["mode"] == "online"


@pytest.mark.parametrize("online", [False, True])
def test_a_person_whose_look_changes_mid_walk_keeps_one_id(tmp_path, online):
    """Person 1 turns from red to blue at frame 12 without moving off its path. A tracker whose appearance gate
    always applies breaks the track there (a crop change in the composited videos does the same): stitching within
    the camera joins the two pieces by motion, without it they look like two people (cosine distance 1.35). The
    default tracker lifts the gate where the boxes overlap well and keeps one track."""
    seq = make_camera(tmp_path / "seqs", "cam", [(1, 4, 10, 3, 0), (2, 140, 70, -3, 0)], 30, 10.0,
                      recolour={1: (12, COLOURS[3])})
    always = TrackerConfig(appearance_gate_iou=1.0)  # the appearance gate applies even where boxes overlap well
    for stitch, tracker, ids in ((1.0, always, 2), (0.0, always, 3), (0.0, None, 2)):
        out = tmp_path / f"run_{stitch}_{online}_{tracker is None}"
        options = TrackOptions(association=AssociationConfig(threshold=0.3, stitch_seconds=stitch), online=online,
                               video=False, tracker=tracker)
        result = track([str(seq)], out, model=ColourExtractor(), detector=[GroundTruthDetector(seq)],
                       options=options, show_progress=False)
        assert result.num_identities == ids
        idf1 = _motmetrics(seq / "gt" / "gt.txt", out / "cam" / "tracks.txt")["idf1"]
        assert (idf1 == pytest.approx(1.0)) == (ids == 2)


def test_find_ranks_the_persons_tracklets_first(two_cameras, tmp_path):
    from reidkit.video.find import find

    out = tmp_path / "run"
    _run(two_cameras, out, options={"video": False})
    query = tmp_path / "query.png"
    Image.fromarray(np.full((40, 16, 3), COLOURS[3], np.uint8)).save(query)
    sightings = find(out, [str(query)], ColourExtractor(), top=4, picture=tmp_path / "found.png")
    assert {s.camera for s in sightings[:2]} == {"cam_a", "cam_b"}
    assert sightings[0].gid == sightings[1].gid and sightings[2].gid != sightings[0].gid
    assert sightings[0].distance < 1e-3 and (tmp_path / "found.png").is_file()


def test_camera_with_nobody_and_zero_frames(two_cameras, tmp_path):
    empty = make_camera(tmp_path / "seqs", "cam_empty", [], 10, 10.0)
    out = tmp_path / "run"
    result = _run([two_cameras[0], empty], out, options={"video": False})
    assert (out / "cam_empty" / "tracks.txt").read_text() == ""
    assert result.cameras[1].note().startswith("nobody detected")

    class NoFrames(FrameSource):
        def _frames(self):
            return iter(())

    out2 = tmp_path / "run2"
    result = track([NoFrames("nothing", "void", 25.0, SIZE, 0)], out2, model=ColourExtractor(),
                   detector=GroundTruthDetector(empty), show_progress=False)
    assert result.cameras[0].note() == "no frames" and (out2 / "void" / "tracks.txt").read_text() == ""


def test_existing_output_refused_unless_overwrite(two_cameras, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ReIDError, match="not empty"):
        _run(two_cameras, out)
    with pytest.raises(ReIDError, match="not a reidkit track run"):
        _run(two_cameras, out, overwrite=True)
    assert (out / "precious.txt").read_text() == "keep me"
    out2 = tmp_path / "run2"
    _run(two_cameras, out2, options={"video": False})
    _run(two_cameras, out2, overwrite=True, options={"video": False})
    assert (out2 / "identities.json").is_file()


def test_unreadable_source_is_named_and_nothing_written(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(ReIDError, match="broken.mp4"):
        track([str(bad)], tmp_path / "run", model=ColourExtractor(), detector=object(), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_ctrl_c_leaves_valid_outputs(two_cameras, tmp_path):
    class Interrupting(FrameSource):
        """Camera a's frames, then KeyboardInterrupt after 12 of them (as Ctrl-C would)."""

        def __init__(self, inner):
            super().__init__(inner.spec, inner.camera, inner.fps, inner.size, inner.num_frames)
            self.inner = inner

        def _frames(self):
            for frame in self.inner:
                if frame.index == 12:
                    raise KeyboardInterrupt
                yield Frame(frame.index, frame.time, frame.image)

    out = tmp_path / "run"
    source = Interrupting(open_source(two_cameras[0]))
    result = track([source], out, model=ColourExtractor(), detector=GroundTruthDetector(two_cameras[0]),
                   options=TrackOptions(association=AssociationConfig(threshold=0.3)), show_progress=False)
    assert result.interrupted and result.cameras[0].frames == 12
    rows = np.loadtxt(out / "cam_a" / "tracks.txt", delimiter=",")
    gt = np.loadtxt(two_cameras[0] / "gt" / "gt.txt", delimiter=",")
    assert len(rows) == int((gt[:, 0] <= 12).sum()) and rows[:, 0].max() == 12
    doc = json.loads((out / "identities.json").read_text())
    assert doc["complete"] is False and doc["num_identities"] == 3
    assert not list(out.rglob("*.partial*")) and not list(out.rglob(".tracks.local.txt"))


def test_split_cameras_by_prefix(tmp_path):
    from reidkit.errors import DataError
    from reidkit.video.pipeline import split_by_camera_prefix

    for name in ("c1s1_000101.jpg", "c1s1_000051.jpg", "c3s1_000026.jpg"):
        Image.fromarray(np.zeros((8, 6, 3), np.uint8)).save(tmp_path / name)
    sources = split_by_camera_prefix(tmp_path)
    assert [s.camera for s in sources] == ["c1", "c3"]
    frames = list(sources[0])
    assert [f.index for f in frames] == [50, 100] and [f.time for f in frames] == [50 / 25.0, 100 / 25.0]
    (tmp_path / "other.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="other.jpg"):
        split_by_camera_prefix(tmp_path)
