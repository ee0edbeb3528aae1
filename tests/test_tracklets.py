"""Tracklets: layouts (MARS, iLIDS-VID, PRID-2011, `reidkit track` crops, Market grouping, manifests), the MARS
evaluation on fabricated fixtures against hand-computed figures, set distances against naive loops, restricted
random sampling, temporal pooling, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from reidkit.data.records import Record
from reidkit.data.tracklets import (
    Tracklet,
    group_records,
    load_ilids_vid,
    load_mars,
    load_prid2011,
    load_track_run,
    load_tracklet_manifest,
    load_tracklets,
    restricted_random_sample,
)
from reidkit.distance import set_distance_matrix
from reidkit.errors import ConfigError, DataError, MetricInputError, ModelError
from reidkit.metrics import evaluate_rank_full
from reidkit.models.temporal import TemporalAttention, pool_ragged
from reidkit.training.tasks.tracklet import FrameEmbedder, evaluate_tracklets


def _jpeg(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (120, 60, 30)).save(path)
    return str(path)


class AngleExtractor:
    """A fake backend: frame path -> the unit vector (cos a, sin a) given by `angles` (degrees)."""

    def __init__(self, angles: dict[str, float]):
        self.angles = angles

    def embed(self, paths, show_progress=False):
        a = np.radians([self.angles[str(p)] for p in paths])
        return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def _embedder(angles: dict[str, float]) -> FrameEmbedder:
    return FrameEmbedder(None, AngleExtractor(angles))


# --------------------------------------------------------------------------------------------------------- MARS
# Test tracks (pid, camera 1-based, frames, angle in degrees of their mean embedding); frames are spread +-2 degrees
# symmetrically, so the mean embedding points exactly at the angle. Queries are tracks 1-3 (query_IDX).
MARS_TEST = [(1, 1, 3, 0.0), (2, 1, 2, 90.0), (3, 2, 2, 115.0),  # queries
             (1, 2, 2, 50.0), (2, 2, 3, 100.0), (3, 1, 2, 140.0), (0, 3, 1, 20.0), (1, 1, 2, 5.0),  # gallery
             (-1, 1, 2, 0.0)]  # junk: skipped
MARS_TRAIN = [(7, 1, 3), (7, 2, 2), (8, 4, 2)]


def _mars_names(tracks, prefix_track=1) -> list[str]:
    names = []
    for i, (pid, cam, n, *_) in enumerate(tracks):
        ptxt = "00-1" if pid == -1 else f"{pid:04d}"
        names += [f"{ptxt}C{cam}T{prefix_track + i:04d}F{f + 1:03d}.jpg" for f in range(n)]
    return names


def _info(tracks) -> np.ndarray:
    rows, start = [], 1
    for pid, cam, n, *_ in tracks:
        rows.append([start, start + n - 1, pid, cam])
        start += n
    return np.asarray(rows, dtype=np.float64)


def make_mars(root: Path) -> dict[str, float]:
    """A MARS layout with MARS_TRAIN / MARS_TEST; returns path -> angle for the test frames."""
    (root / "info").mkdir(parents=True)
    angles: dict[str, float] = {}
    for split, tracks, folder in (("train", MARS_TRAIN, "bbox_train"), ("test", MARS_TEST, "bbox_test")):
        names = _mars_names(tracks)
        (root / "info" / f"{split}_name.txt").write_text("\n".join(names) + "\n")
        savemat(root / "info" / f"tracks_{split}_info.mat", {f"track_{split}_info": _info(tracks)})
        k = 0
        for track in tracks:
            n = track[2]
            spread = np.linspace(-2.0, 2.0, n) if n > 1 else np.zeros(1)
            for j in range(n):
                path = _jpeg(root / folder / names[k][:4] / names[k])
                if split == "test":
                    angles[path] = track[3] + spread[j]
                k += 1
    savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.array([[1, 2, 3]])})
    return angles


def test_mars_loader_reads_tracks_queries_and_notes_junk(tmp_path):
    make_mars(tmp_path / "MARS")
    ds = load_mars(tmp_path / "MARS")
    assert [(t.pid, t.camid, len(t)) for t in ds.query] == [(1, 0, 3), (2, 0, 2), (3, 1, 2)]
    assert [(t.pid, t.camid, len(t)) for t in ds.gallery] == [(1, 1, 2), (2, 1, 3), (3, 0, 2), (0, 2, 1), (1, 0, 2)]
    assert [(t.pid, t.camid) for t in ds.train] == [(7, 0), (7, 1), (8, 3)]
    first = ds.query[0]
    assert first.paths == tuple(str(tmp_path / "MARS" / "bbox_test" / "0001" / f"0001C1T0001F00{i}.jpg")
                                for i in (1, 2, 3))
    assert any("junk" in n and "1 junk" in n for n in ds.notes)
    assert load_tracklets(tmp_path / "MARS").query == ds.query  # recognised by the dispatcher


def test_mars_evaluation_matches_hand_computed_figures(tmp_path):
    """Query 1 (0 deg): gallery by angle: track 8 (5 deg, same pid + camera: removed), distractor (20), pid 1
    cam 2 (50) -> true match at rank 2, AP 1/2. Query 2 (90): pid 2 cam 2 (100) first -> AP 1. Query 3 (115,
    camera 2): pid 2 cam 2 (100, another person) then pid 3 cam 1 (140) -> rank 2, AP 1/2.
    rank-1 = 1/3, rank-5 = 1, mAP = mINP = (1/2 + 1 + 1/2) / 3."""
    angles = make_mars(tmp_path / "MARS")
    result, arrays = evaluate_tracklets(_embedder(angles), load_mars(tmp_path / "MARS"), show_progress=False)
    assert result.cmc[0] == pytest.approx(1 / 3)
    assert result.cmc[4] == pytest.approx(1.0)
    assert result.mAP == pytest.approx(2 / 3)
    assert result.mINP == pytest.approx(2 / 3)
    assert arrays["distmat"].shape == (3, 5)
    # the closest-pair distance changes distances by at most 4 degrees: the same ranks here
    result_min, _ = evaluate_tracklets(_embedder(angles), load_mars(tmp_path / "MARS"), set_distance="min",
                                       show_progress=False)
    assert result_min.mAP == pytest.approx(2 / 3)


def test_mars_tracklet_spanning_two_identities_is_refused(tmp_path):
    make_mars(tmp_path / "MARS")
    names = (tmp_path / "MARS/info/test_name.txt").read_text().splitlines()
    names[1] = names[1].replace("0001C1", "0002C1")  # the 2nd frame of track 1 now names another person
    (tmp_path / "MARS/info/test_name.txt").write_text("\n".join(names))
    with pytest.raises(DataError, match=r"MARS query track 1 \(pid 1, camera 1\).*0002C1T0001F002.jpg.*two"):
        load_mars(tmp_path / "MARS")


def test_mars_frame_missing_on_disk_is_named(tmp_path):
    make_mars(tmp_path / "MARS")
    gone = tmp_path / "MARS/bbox_test/0002/0002C1T0002F002.jpg"
    gone.unlink()
    with pytest.raises(DataError, match=r"1 frame\(s\) missing on disk: .*0002C1T0002F002.jpg of tracklet \(pid 2"):
        load_mars(tmp_path / "MARS")


# ------------------------------------------------------------------------------------------ iLIDS-VID and PRID
def make_two_camera(root: Path, cams: tuple[str, str], prefix: str, digits: int,
                    frames: dict[tuple[int, int], int]) -> dict[str, float]:
    """Sequences cams[c]/<prefix><pid>/NNNN.png; embedding angle 30 * pid (+3 in the second camera)."""
    angles = {}
    for (cam, pid), n in frames.items():
        for f in range(n):
            path = _jpeg(root / cams[cam] / f"{prefix}{pid:0{digits}d}" / f"{f:04d}.png")
            angles[path] = 30.0 * pid + 3.0 * cam
    return angles


def test_ilids_vid_protocol_split_and_evaluation(tmp_path):
    frames = {(c, pid): 3 for c in (0, 1) for pid in (1, 2, 3, 4)} | {(0, 5): 2}  # person 5: camera 1 only
    angles = make_two_camera(tmp_path / "iLIDS" / "i-LIDS-VID" / "sequences", ("cam1", "cam2"), "person", 3, frames)
    ds = load_ilids_vid(tmp_path / "iLIDS", seed=0)
    test_ids = {t.pid for t in ds.query}
    assert len(test_ids) == 2 and {t.pid for t in ds.gallery} == test_ids
    assert {t.pid for t in ds.train}.isdisjoint(test_ids) and {t.pid for t in ds.train} | test_ids == {1, 2, 3, 4}
    assert {t.camid for t in ds.query} == {0} and {t.camid for t in ds.gallery} == {1}
    assert any("1 identit" in n and "one camera" in n for n in ds.notes)
    # each query's own identity is 3 degrees away, the other >= 27: rank-1 = mAP = 100 %
    result, _ = evaluate_tracklets(_embedder(angles), ds, show_progress=False)
    assert result.cmc[0] == 1.0 and result.mAP == 1.0
    other = load_ilids_vid(tmp_path / "iLIDS", seed=1)
    assert load_tracklets(tmp_path / "iLIDS", seed=1).query == other.query


def test_prid_uses_people_in_both_cameras_with_enough_frames(tmp_path):
    frames = {(0, 1): 4, (0, 2): 4, (0, 3): 2, (0, 4): 4, (0, 5): 4,
              (1, 1): 4, (1, 2): 5, (1, 3): 4, (1, 4): 4, (1, 5): 4, (1, 6): 4, (1, 7): 4}
    make_two_camera(tmp_path / "prid" / "multi_shot", ("cam_a", "cam_b"), "person_", 4, frames)
    ds = load_prid2011(tmp_path / "prid", seed=0, min_frames=3)
    used = {t.pid for t in ds.train + ds.query}
    assert used == {1, 2, 4, 5}  # 3: too short in cam_a; 6, 7: cam_b only
    assert len(ds.query) == 2 and len(ds.gallery) == 2
    assert any("2 identit" in n and "one camera" in n for n in ds.notes)
    assert any("shorter than 3" in n for n in ds.notes)
    assert [len(t) for t in ds.gallery if t.pid == 2] in ([], [5])


def test_empty_sequence_folder_is_an_error(tmp_path):
    make_two_camera(tmp_path / "i" / "sequences", ("cam1", "cam2"), "person", 3, {(0, 1): 2, (1, 1): 2})
    (tmp_path / "i" / "sequences" / "cam2" / "person002").mkdir()
    with pytest.raises(DataError, match=r"empty tracklet: .*person002 holds no images"):
        load_ilids_vid(tmp_path / "i")


# --------------------------------------------------------------------------------------- track runs and Market
def test_track_run_crops_grouped_by_gid_camera_track_in_frame_order(tmp_path):
    crops = tmp_path / "run" / "crops"
    for name in ("0001_c1_t00003_f000012.jpg", "0001_c1_t00003_f000010.jpg", "0001_c2_t00001_f000011.jpg",
                 "0002_c1_t00004_f000010.jpg", "0001_c1_t00009_f000030.jpg"):
        _jpeg(crops / name)
    (crops / "notes.txt").write_text("x")
    ds = load_track_run(tmp_path / "run")
    assert [(t.pid, t.camid, t.key, [Path(p).name[-11:-4] for p in t.paths]) for t in ds.gallery] == [
        (1, 0, "t00003", ["f000010", "f000012"]), (1, 0, "t00009", ["f000030"]), (1, 1, "t00001", ["f000011"]),
        (2, 0, "t00004", ["f000010"])]
    assert ds.protocol == "pooled" and ds.query == ds.gallery
    assert any("notes.txt" in n for n in ds.notes)
    assert load_tracklets(tmp_path / "run").gallery == ds.gallery


def _market(root: Path, split: str, names: list[str]) -> list[str]:
    return [_jpeg(root / split / n) for n in names]


def test_market_grouping_split_and_pooled_protocols(tmp_path):
    root = tmp_path / "m"
    _market(root, "query", ["0001_c1s1_000100_00.jpg", "0001_c2s1_000100_00.jpg", "0002_c1s1_000100_00.jpg",
                            "0002_c2s1_000100_00.jpg"])
    _market(root, "bounding_box_test", ["0001_c1s1_000120_00.jpg", "0001_c1s2_000050_00.jpg",
                                        "0001_c2s1_000130_00.jpg", "0002_c1s1_000150_00.jpg",
                                        "0002_c2s1_000160_00.jpg", "0000_c1s1_000001_00.jpg",
                                        "0000_c1s1_000002_00.jpg"])
    split = load_tracklets(root, "split")
    assert all(len(t) == 1 for t in split.query)
    assert any("one frame" in n for n in split.notes)
    keys = [(t.pid, t.camid, t.key, len(t)) for t in split.gallery]
    assert (1, 0, "s1", 1) in keys and (1, 0, "s2", 1) in keys
    assert sum(t.pid == 0 for t in split.gallery) == 2  # each distractor is its own tracklet
    pooled = load_tracklets(root, "pooled")
    assert [(t.pid, t.camid, t.key, len(t)) for t in pooled.query] == [
        (1, 0, "s1", 2), (1, 0, "s2", 1), (1, 1, "s1", 2), (2, 0, "s1", 2), (2, 1, "s1", 2)]
    assert len(pooled.gallery) == 7  # + 2 distractors, gallery only
    first = pooled.query[0].paths
    assert [Path(p).name for p in first] == ["0001_c1s1_000100_00.jpg", "0001_c1s1_000120_00.jpg"]


# -------------------------------------------------------------------------------------------------- manifests
def _manifest(path: Path, rows: list[str]) -> Path:
    path.write_text("path,pid,camid,track,split,frame\n" + "\n".join(rows) + "\n")
    return path


def test_manifest_tracks_grouped_and_ordered_by_frame(tmp_path):
    for name in "abcd":
        _jpeg(tmp_path / f"{name}.jpg")
    ds = load_tracklet_manifest(_manifest(tmp_path / "m.csv", [
        "b.jpg,3,0,t1,query,7", "a.jpg,3,0,t1,query,2", "c.jpg,3,1,t2,gallery,1", "d.jpg,4,1,t3,gallery,1"]))
    assert [Path(p).name for p in ds.query[0].paths] == ["a.jpg", "b.jpg"]
    assert [(t.pid, t.key) for t in ds.gallery] == [(3, "t2"), (4, "t3")]


def test_manifest_track_spanning_two_identities_is_refused(tmp_path):
    for name in "ab":
        _jpeg(tmp_path / f"{name}.jpg")
    path = _manifest(tmp_path / "m.csv", ["a.jpg,3,0,t1,query,1", "b.jpg,5,0,t1,query,2"])
    with pytest.raises(DataError, match=r"track 't1' \(camera 0, query\) spans 2 identities \[3, 5\].*line 3: pid 5"):
        load_tracklet_manifest(path)


def test_manifest_frame_missing_on_disk_is_named(tmp_path):
    _jpeg(tmp_path / "a.jpg")
    path = _manifest(tmp_path / "m.csv", ["a.jpg,3,0,t1,query,1", "gone.jpg,3,0,t1,query,2",
                                          "a.jpg,3,1,t2,gallery,1"])
    with pytest.raises(DataError, match=r"gone.jpg of tracklet \(pid 3, camera 0 track t1"):
        load_tracklet_manifest(path)


def test_empty_tracklet_is_refused():
    with pytest.raises(DataError, match=r"empty tracklet: pid 4, camera 1, track x has no frames"):
        Tracklet(4, 1, (), "x")


def test_one_frame_gallery_equals_image_evaluation(tmp_path):
    """Documented behaviour: one-frame tracklets are allowed; with one frame each (query and gallery), the
    tracklet evaluation is the image evaluation of those frames."""
    rng = np.random.default_rng(0)
    q = [Tracklet(int(p), int(c), (f"q{i}",)) for i, (p, c) in enumerate(zip(rng.integers(1, 5, 6), [0] * 6))]
    g = [Tracklet(int(p), 1, (f"g{i}",)) for i, p in enumerate(rng.integers(1, 5, 12))]
    angles = {t.paths[0]: float(a) for t, a in zip(q + g, rng.uniform(0, 360, 18))}
    from reidkit.data.tracklets import TrackletDataset

    result, arrays = evaluate_tracklets(_embedder(angles), TrackletDataset(query=q, gallery=g), show_progress=False)
    a = np.radians([angles[t.paths[0]] for t in q + g])
    feats = np.stack([np.cos(a), np.sin(a)], 1)
    dist = 1 - feats[:6] @ feats[6:].T  # cosine distance by hand
    ref = evaluate_rank_full(dist, [t.pid for t in q], [t.pid for t in g], [0] * 6, [1] * 12)
    assert result.mAP == pytest.approx(ref.mAP) and np.allclose(result.cmc, ref.cmc)


# ------------------------------------------------------------------------------------------- set distances
def _naive_set_distance(a, oa, b, ob, mode):
    out = np.zeros((len(oa) - 1, len(ob) - 1))
    for i in range(len(oa) - 1):
        for j in range(len(ob) - 1):
            x, y = a[oa[i]:oa[i + 1]], b[ob[j]:ob[j + 1]]
            if mode == "mean":
                mx, my = x.mean(0), y.mean(0)
                out[i, j] = 1 - mx @ my / (np.linalg.norm(mx) * np.linalg.norm(my))
            else:
                out[i, j] = min(1 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v)) for u in x for v in y)
    return out


@pytest.mark.parametrize("mode", ["mean", "min"])
@pytest.mark.parametrize("max_elements", [7, 1 << 20])  # tiny blocks exercise the chunking
def test_set_distance_matrix_matches_naive_loop(mode, max_elements):
    rng = np.random.default_rng(1)
    la, lb = rng.integers(1, 6, 7), rng.integers(1, 5, 9)
    oa, ob = np.concatenate([[0], np.cumsum(la)]), np.concatenate([[0], np.cumsum(lb)])
    a, b = rng.normal(size=(oa[-1], 5)), rng.normal(size=(ob[-1], 5))
    got = set_distance_matrix(a, oa, b, ob, mode, "cosine", max_elements=max_elements)
    assert np.allclose(got, _naive_set_distance(a, oa, b, ob, mode), atol=1e-9)


def test_set_distance_refuses_empty_sets_and_bad_offsets():
    a = np.ones((3, 2))
    with pytest.raises(MetricInputError, match="set 1 is empty"):
        set_distance_matrix(a, [0, 2, 2, 3], a, [0, 3])
    with pytest.raises(MetricInputError, match="offsets must run from 0 to the 3 rows"):
        set_distance_matrix(a, [0, 2], a, [0, 3])
    with pytest.raises(MetricInputError, match="set distance 'max'"):
        set_distance_matrix(a, [0, 3], a, [0, 3], mode="max")


# --------------------------------------------------------------------------------------- pooling and sampling
def test_attention_pooling_matches_naive_softmax_and_uniform_equals_average():
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(10, 6), dim=1)
    offsets = torch.tensor([0, 3, 4, 10])
    scores = torch.randn(10)
    got = pool_ragged(feats, offsets, "attention", scores)
    for i in range(3):
        s, e = int(offsets[i]), int(offsets[i + 1])
        w = np.exp(scores[s:e].numpy() - scores[s:e].numpy().max())
        ref = (w[:, None] / w.sum() * feats[s:e].numpy()).sum(0)
        assert np.allclose(got[i].numpy(), ref / np.linalg.norm(ref), atol=1e-6)
    head = TemporalAttention(6)  # zero-initialised last layer: uniform weights
    uniform = pool_ragged(feats, offsets, "attention", head(feats).detach())
    avg = pool_ragged(feats, offsets, "avg")
    means = [feats[int(offsets[i]):int(offsets[i + 1])].mean(0) for i in range(3)]
    assert torch.allclose(uniform, avg, atol=1e-6)
    assert torch.allclose(avg, torch.nn.functional.normalize(torch.stack(means), dim=1), atol=1e-6)


def test_consensus_pooling_downweights_the_odd_frame():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pooled = pool_ragged(feats, torch.tensor([0, 4]), "consensus")
    avg = pool_ragged(feats, torch.tensor([0, 4]), "avg")
    assert pooled[0, 1] < avg[0, 1]  # the outlier's direction counts less than in the average
    mean = torch.nn.functional.normalize(feats.mean(0), dim=0)
    w = torch.softmax(feats @ mean / 0.1, 0)  # by hand
    assert torch.allclose(pooled[0], torch.nn.functional.normalize((w[:, None] * feats).sum(0), dim=0), atol=1e-6)


def test_attention_pooling_needs_a_learned_head():
    with pytest.raises(ModelError, match="pooling=attention needs attention scores"):
        pool_ragged(torch.ones(2, 2), torch.tensor([0, 2]), "attention")
    from reidkit.training.tasks.tracklet import check_evaluation_options

    with pytest.raises(ConfigError, match="no learned attention head"):
        check_evaluation_options("attention", "mean", False, "runs/x.pt")
    with pytest.raises(ConfigError, match="set distance min compares frames"):
        check_evaluation_options("consensus", "min", False, "runs/x.pt")


@pytest.mark.parametrize("n", [1, 3, 4, 5, 9, 17])
def test_restricted_random_sampling_one_frame_per_chunk(n):
    t = 4
    rng = np.random.default_rng(0)
    picks = restricted_random_sample(np.full(2000, n), t, rng)
    assert picks.shape == (2000, t) and picks.min() >= 0 and picks.max() <= n - 1
    assert (np.diff(picks, axis=1) >= 0).all()
    if n >= t:
        for c in range(t):  # chunk c covers frames [floor(c n / t), floor((c + 1) n / t))
            lo, hi = c * n // t, (c + 1) * n // t
            col = picks[:, c]
            assert col.min() == lo and col.max() == hi - 1  # every frame of the chunk is drawn, nothing outside
            counts = np.bincount(col - lo, minlength=hi - lo)
            assert counts.min() > 2000 / (hi - lo) * 0.7  # about uniform within the chunk
        assert (np.diff(picks, axis=1) > 0).all()  # distinct frames
    else:  # shorter than the clip: frame floor(c n / t) for chunk c, so every frame appears
        assert (picks == (np.arange(t) * n) // t).all()
        assert set(picks[0]) == set(range(n))


def test_restricted_random_sampling_refuses_empty_tracklets():
    with pytest.raises(DataError, match="tracklet 1 has no frames"):
        restricted_random_sample([3, 0], 4, np.random.default_rng(0))


def test_group_records_orders_frames_and_splits_sequences():
    recs = [Record("/x/0003_c1s2_000200_00.jpg", 3, 0, 200), Record("/x/0003_c1s2_000100_00.jpg", 3, 0, 100),
            Record("/x/0003_c1s1_000150_00.jpg", 3, 0, 150), Record("/x/0003_c2s1_000100_00.jpg", 3, 1, 100)]
    out = group_records(recs)
    assert [(t.camid, t.key, [Path(p).name[10:16] for p in t.paths]) for t in out] == [
        (0, "s1", ["000150"]), (0, "s2", ["000100", "000200"]), (1, "s1", ["000100"])]
    assert [len(t) for t in group_records(recs, by_sequence=False)] == [3, 1]
    assert math.isclose(sum(len(t) for t in out), len(recs))


def test_synthetic_tracklets_group_identity_and_camera(tmp_path):
    from reidkit.data.synth import SynthConfig
    from reidkit.data.tracklets import synthetic_tracklets

    cfg = SynthConfig(num_train_ids=3, num_test_ids=2, num_cameras=2, images_per_camera=3, distractor_fraction=0.0)
    ds = synthetic_tracklets(tmp_path / "s", cfg)
    assert [(t.pid, t.camid, len(t)) for t in ds.query] == [(4, 0, 3), (4, 1, 3), (5, 0, 3), (5, 1, 3)]
    assert [len(t) for t in ds.train] == [3] * 6
