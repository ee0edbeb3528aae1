"""`reidkit track` and `reidkit find` from the command line: a tiny synthetic run, bad input (exit 2 with the file
named), and the Market-1501 check on real frames (../shared)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from reidkit.cli.main import main
from test_video_pipeline import make_camera

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MARKET_FRAMES = SHARED / "datasets" / "market1501-frames"
OSNET_0277 = SHARED / "models/openvino/person-reidentification-retail-0277/person-reidentification-retail-0277.xml"


@pytest.fixture
def public_sequence(tmp_path) -> Path:
    """A MOT sequence whose det/det.txt is its ground truth (public detections that are exact)."""
    seq = make_camera(tmp_path / "seqs", "cam_x", [(1, 4, 10, 3, 0), (2, 4, 70, 2, 0)], 15, 10.0)
    (seq / "det").mkdir()
    rows = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",")
    rows[:, 1], rows[:, 6] = -1, 0.95
    np.savetxt(seq / "det" / "det.txt", rows, delimiter=",", fmt="%g")
    return seq


def test_track_and_find_from_the_command_line(public_sequence, small_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["track", str(public_sequence), "--out", str(out), "--model", str(small_checkpoint),
                 "--detector", "public", "--quiet", "--no-video"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "cam_x" in printed and "global identities" in printed
    rows = np.loadtxt(out / "cam_x" / "tracks.txt", delimiter=",")
    assert len(rows) == len(np.loadtxt(public_sequence / "gt" / "gt.txt", delimiter=","))
    crop = sorted((out / "crops").glob("*.jpg"))[0]
    code = main(["find", "--query", str(crop), "--in", str(out), "--top", "2", "--json"])
    found = json.loads(capsys.readouterr().out)
    assert code == 0 and found["sightings"][0]["crop"] == str(crop.resolve())
    assert Path(found["picture"]).is_file()


def test_stitch_seconds_reaches_the_association(public_sequence, small_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["track", str(public_sequence), "--out", str(out), "--model", str(small_checkpoint), "--detector",
                 "public", "--quiet", "--no-video", "--stitch-seconds", "0.5"]) == 0
    assert json.loads((out / "identities.json").read_text())["association"]["stitch_seconds"] == 0.5
    with pytest.raises(SystemExit) as exit_info:
        main(["track", str(public_sequence), "--out", str(tmp_path / "bad"), "--stitch-seconds", "-1"])
    assert exit_info.value.code == 2 and "--stitch-seconds" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing source", "existing out", "det.txt for two cameras", "find not a run"])
def test_bad_input_exits_2_naming_the_cause(case, public_sequence, small_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    model = ["--model", str(small_checkpoint)]
    if case == "missing source":
        argv, expect = ["track", str(tmp_path / "nowhere.mp4"), "--out", str(out), *model], "nowhere.mp4"
    elif case == "existing out":
        out.mkdir()
        (out / "x").write_text("x")
        argv, expect = ["track", str(public_sequence), "--out", str(out), *model], "--overwrite"
    elif case == "det.txt for two cameras":
        other = tmp_path / "seqs" / "cam_y"
        shutil.copytree(public_sequence, other)
        argv = ["track", str(public_sequence), str(other), "--out", str(out), *model, "--detector",
                str(public_sequence / "det" / "det.txt")]
        expect = "public"
    else:
        argv, expect = ["find", "--query", str(tmp_path), "--in", str(tmp_path), *model], "identities.json"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expect in err, err
    if case == "missing source":
        assert not out.exists()


@pytest.mark.shared
@pytest.mark.slow
def test_market_frames_find_the_query_in_its_frame(tmp_path, capsys):
    """Issue check: track the 16 Market-1501 frames (cameras c1 and c3), then find query 0001_c1s1_001051_00.jpg:
    the first sighting is in frame c1s1_001051.jpg (the frame the query crop was cut from)."""
    if not (MARKET_FRAMES.is_dir() and OSNET_0277.is_file()):
        pytest.skip("../shared Market-1501 frames or the Intel OSNet model not present")
    out = tmp_path / "run"
    assert main(["track", str(MARKET_FRAMES / "frames"), "--split-cameras-by-prefix", "--out", str(out),
                 "--model", str(OSNET_0277), "--quiet", "--no-video"]) == 0
    capsys.readouterr()
    assert main(["find", "--query", str(MARKET_FRAMES / "query" / "0001_c1s1_001051_00.jpg"), "--in", str(out),
                 "--json"]) == 0
    sightings = json.loads(capsys.readouterr().out)["sightings"]
    assert sightings[0]["frame_file"] == "c1s1_001051.jpg" and sightings[0]["camera"] == "c1"


@pytest.mark.slow
def test_demo_multicamera_section(tiny_market, small_checkpoint, tmp_path):
    """The demo's multi-camera section on a tiny video: its pictures exist and the cross-camera IDF1 it reports is
    TrackEval's on the files it wrote (recomputed here with motmetrics' IDF1 over all cameras at once)."""
    import motmetrics as mm

    from reidkit.cli.demo import multicamera_demo
    from test_video_pipeline import _iou_distance

    report = multicamera_demo(tmp_path, tiny_market, small_checkpoint, show_progress=False,
                              video=dict(cameras=2, people=3, seconds=6.0, fps=5.0, width=160, height=96))
    assert (tmp_path / "multicamera_frames.png").is_file() and (tmp_path / "multicamera_contact_sheet.png").is_file()
    acc = mm.MOTAccumulator(auto_id=True)
    run, cams = Path(report["run"]), tmp_path / "video" / "cameras"
    for cam in ("cam1", "cam2"):
        gt = np.loadtxt(cams / cam / "gt" / "gt.txt", delimiter=",", ndmin=2)
        pred = np.loadtxt(run / cam / "tracks.txt", delimiter=",", ndmin=2) \
            if (run / cam / "tracks.txt").stat().st_size else np.zeros((0, 10))
        for frame in np.unique(np.concatenate([gt[:, 0], pred[:, 0]])):
            g, p = gt[gt[:, 0] == frame], pred[pred[:, 0] == frame]
            acc.update(g[:, 1].astype(int).tolist(), p[:, 1].astype(int).tolist(),
                       _iou_distance(g[:, 2:6], p[:, 2:6]))
    idf1 = mm.metrics.create().compute(acc, metrics=["idf1"], name="all").iloc[0]["idf1"]
    assert report["cross_camera_IDF1"] == pytest.approx(100 * idf1, abs=0.1)
