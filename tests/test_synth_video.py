"""Synthetic multi-camera video: ground-truth boxes are where the pasted pixels are, ids are global and consistent
with identities.json, output is deterministic by seed, real crops come from the right source camera."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reidkit.data.mot import read_gt
from reidkit.data.synth_video import SyntheticVideo, SynthVideoConfig, generate_synth_video

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SMALL = dict(cameras=3, people=8, seconds=30.0, fps=2.0, width=160, height=96)


def test_ground_truth_box_is_exactly_where_the_person_is_pasted():
    """Render the same frame over an all-black and an all-white background: their difference is (1 - coverage)
    * 255, the people's coverage measured from pixels. With one person in the frame its bounding box must equal the
    ground-truth box, and the visibility must equal the covered fraction."""
    video = SyntheticVideo(SynthVideoConfig(**SMALL))
    renders = {}
    for level in (0.0, 1.0):
        video.background = lambda camera, level=level: np.full((96, 160, 3), level, np.float32)
        renders[level] = list(video.frames(0))
    checked = 0
    for (index, black, gt), (_, white, _) in zip(renders[0.0], renders[1.0]):
        if len(gt) != 1:
            continue
        coverage = 1.0 - (white.astype(float) - black.astype(float)).max(axis=2) / 255.0
        x, y, w, h = gt.boxes[0].astype(int)
        outside = coverage.copy()
        outside[y:y + h, x:x + w] = 0
        if outside.any():  # someone else too (below MIN_VISIBILITY at the frame edge): not a one-person frame
            continue
        rows, cols = np.flatnonzero(coverage.max(axis=1) > 0), np.flatnonzero(coverage.max(axis=0) > 0)
        assert (cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]) == (x, y, w, h), f"frame {index}"
        assert gt.frames[0] == index + 1
        checked += 1
    assert checked >= 5


def test_occlusion_lowers_visibility_and_front_person_is_drawn_over():
    video = SyntheticVideo(SynthVideoConfig(**(SMALL | {"people": 20, "seconds": 30.0})))
    vis = np.concatenate([gt.visibility for camera in range(3) for _, _, gt in video.frames(camera)])
    assert (vis == 1.0).mean() > 0.5 and (vis < 0.9).any()  # mostly fully visible, some occluded or cut off


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sv") / "site"
    return generate_synth_video(out, SynthVideoConfig(**SMALL | {"people": 12, "seconds": 60.0}),
                                show_progress=False)


def test_layout_and_global_ids_agree_with_identities_json(written):
    meta = json.loads((written / "identities.json").read_text())
    assert meta["cameras"] == ["cam1", "cam2", "cam3"]
    gt = {c: read_gt(written / c / "gt" / "gt.txt") for c in meta["cameras"]}
    for camera in meta["cameras"]:
        assert len(list((written / camera / "img1").glob("*.jpg"))) == 120
        assert "frameRate=2" in (written / camera / "seqinfo.ini").read_text()
        assert gt[camera].visibility.min() >= 0.1 and gt[camera].boxes[:, 2:].min() > 0
    for gid, info in meta["identities"].items():
        in_gt = sorted(c for c in gt if (gt[c].ids == int(gid)).any())
        assert in_gt == info["cameras"], gid
        for visit in info["visits"]:
            frames = gt[visit["camera"]].frames[gt[visit["camera"]].ids == int(gid)]
            assert visit["first_frame"] in frames and visit["last_frame"] in frames
    # One person is in one place at a time: no frame has the same id in two cameras.
    seen = [set(zip(gt[c].frames.tolist(), gt[c].ids.tolist())) for c in gt]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert sum(len(info["cameras"]) >= 2 for info in meta["identities"].values()) >= 6
    manifest = json.loads((written / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "synthetic" and len(manifest["identities"]) == 12


def test_same_seed_same_videos_other_seed_other_videos(written, tmp_path):
    again = generate_synth_video(tmp_path / "again", SynthVideoConfig(**SMALL | {"people": 12, "seconds": 60.0}),
                                 show_progress=False)
    for camera in ("cam1", "cam3"):
        assert (again / camera / "gt" / "gt.txt").read_bytes() == (written / camera / "gt" / "gt.txt").read_bytes()
        assert (again / camera / "img1" / "000040.jpg").read_bytes() == \
            (written / camera / "img1" / "000040.jpg").read_bytes()
    def plan(seed: int) -> list:
        config = SynthVideoConfig(**SMALL | {"people": 12, "seconds": 60.0, "seed": seed})
        return [(v.camera, v.start) for v in SyntheticVideo(config).visits]

    assert plan(1) != plan(0)


def test_re_entries_exist():
    video = SyntheticVideo(SynthVideoConfig(cameras=3, people=40, seconds=120.0))
    visits = {}
    for v in video.visits:
        visits.setdefault(v.gid, []).append(v.camera)
    assert any(len(cams) > len(set(cams)) for cams in visits.values())  # someone comes back to a camera
    assert all(a != b for cams in visits.values() for a, b in zip(cams, cams[1:]))  # never twice in a row


def test_cli_refuses_an_existing_output_and_overwrites_on_request(tmp_path, capsys):
    from reidkit.cli.main import main

    out = tmp_path / "site"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["synth-video", "--out", str(out), "--cameras", "2", "--people", "3", "--seconds", "4", "--fps", "2",
            "--size", "128x96", "--quiet"]
    assert main(args) == 2 and "exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cam1", "cam2", "identities.json", "manifest.json", "preview.png"]
    assert main(["synth-video", "--out", str(tmp_path / "x"), "--pids", "1,2"]) == 2  # --pids needs --crops


@pytest.mark.shared
def test_real_crops_come_from_the_mapped_source_camera(tmp_path):
    crops = SHARED / "datasets" / "cuhk03np-detected" / "bounding_box_train"
    if not crops.is_dir():
        pytest.skip("../shared CUHK03-NP not present")
    cfg = SynthVideoConfig(cameras=3, people=4, seconds=6.0, fps=2.0, width=160, height=96, crops=str(crops),
                           pids=[1, 2, 4, 5, 8, 13])
    out = generate_synth_video(tmp_path / "real", cfg, show_progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "crops"
    for info in manifest["identities"].values():
        assert info["source_pid"] in cfg.pids
        for camera, source_cam in (("cam1", "c1"), ("cam2", "c2"), ("cam3", "c1")):  # ((k - 1) % 2) + 1
            names = [Path(p).name for p in info["crops"][camera]]
            assert names and all(n.startswith(f"{info['source_pid']:04d}_{source_cam}_") for n in names)


@pytest.mark.shared
def test_val_ids_uses_the_validation_identities_of_the_seed_0_carve():
    crops = SHARED / "datasets" / "cuhk03np-detected" / "bounding_box_train"
    if not crops.is_dir():
        pytest.skip("../shared CUHK03-NP not present")
    from reidkit.data import load_dataset
    from reidkit.data.split import carve_validation_records

    held_out = {r.pid for r in carve_validation_records(load_dataset(crops).train, 150, seed=0).query}
    video = SyntheticVideo(SynthVideoConfig(cameras=3, people=40, seconds=10.0, crops=str(crops), val_ids=150))
    assert set(video.cast.source_pid.values()) <= held_out and len(set(video.cast.source_pid.values())) == 40


def test_sprite_cache_is_bounded_and_eviction_does_not_change_the_frames(monkeypatch):
    """A long plan must not keep every visitor's sprites: with room for one identity the cache never holds more,
    and the frames equal those rendered with room for all (sprites are re-rendered from their seeds)."""
    import reidkit.data.synth_video as sv

    cfg = SynthVideoConfig(**SMALL | {"people": 12})
    roomy = [frame for _, frame, _ in SyntheticVideo(cfg).frames(1)]
    sizes = []
    original_native = sv._Sprites.native

    def native(self, gid):
        result = original_native(self, gid)
        sizes.append(len(self._native))
        return result

    monkeypatch.setattr(sv, "SPRITE_CACHE_IDENTITIES", 1)
    monkeypatch.setattr(sv._Sprites, "native", native)
    tight = [frame for _, frame, _ in SyntheticVideo(cfg).frames(1)]
    assert sizes and max(sizes) == 1
    assert len(tight) == len(roomy) and all(np.array_equal(a, b) for a, b in zip(tight, roomy))
