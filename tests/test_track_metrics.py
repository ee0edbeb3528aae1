"""Tracking metrics: hand-computed values on toy sequences and py-motmetrics (an independent implementation) on
fabricated sequences with misses, false positives and identity switches."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.data.mot import MotTable
from reidkit.errors import MetricInputError
from reidkit.metrics.tracking import evaluate_multicamera, evaluate_tracks

BOX = [0, 0, 10, 20]


def _table(rows: list[tuple[int, int, list[float]]]) -> MotTable:
    return MotTable([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], np.ones(len(rows)))


def test_three_frame_toy_case_by_hand():
    # Person 5 stands still for 3 frames. The tracker follows it as id 1 in frames 1-2 and id 2 in frame 3 (one
    # switch), and adds a false box far away in frame 2. IoU of every match is exactly 1.
    gt = _table([(1, 5, BOX), (2, 5, BOX), (3, 5, BOX)])
    pred = _table([(1, 1, BOX), (2, 1, BOX), (2, 3, [100, 100, 10, 20]), (3, 2, BOX)])
    r = evaluate_tracks(gt, pred)
    # DetA = TP / (TP + FN + FP) = 3 / 4. AssA averages TPA / (TPA + FNA + FPA) over the 3 true positives:
    # pair (5, 1): 2 / (2 + 1 + 0) twice, pair (5, 2): 1 / (1 + 2 + 0) once -> 5/9. HOTA = sqrt(DetA * AssA).
    assert r["DetA"] == pytest.approx(75.0) and r["AssA"] == pytest.approx(100 * 5 / 9)
    assert r["HOTA"] == pytest.approx(100 * np.sqrt(0.75 * 5 / 9))
    # Identity: 5 <-> 1 gives IDTP 2, IDFN 1 (frame 3), IDFP 2 (id 2 and id 3): IDF1 = 2*2 / (2*2 + 2 + 1).
    assert (r["IDTP"], r["IDFP"], r["IDFN"]) == (2, 2, 1)
    assert r["IDF1"] == pytest.approx(100 * 4 / 7) and r["IDP"] == 50.0 and r["IDR"] == pytest.approx(200 / 3)
    # CLEAR: MOTA = 1 - (FN + FP + IDSW) / GT = 1 - (0 + 1 + 1) / 3; MOTP = mean IoU of matches = 1.
    assert (r["FN"], r["FP"], r["IDSW"], r["TP"]) == (0, 1, 1, 3)
    assert r["MOTA"] == pytest.approx(100 / 3) and r["MOTP"] == pytest.approx(100.0)


def test_perfect_and_empty_tracks():
    gt = _table([(t, i, [10 * i, 0, 10, 20]) for t in range(1, 5) for i in (1, 2)])
    perfect = evaluate_tracks(gt, gt)
    assert perfect["HOTA"] == pytest.approx(100) and perfect["IDF1"] == 100 and perfect["MOTA"] == 100
    empty = evaluate_tracks(gt, MotTable.empty())
    assert empty["FN"] == 8 and empty["MOTA"] == 0 and empty["IDF1"] == 0 and empty["HOTA"] == 0


def test_duplicate_id_in_a_frame_is_refused():
    pred = _table([(1, 1, BOX), (1, 1, [50, 0, 10, 20])])
    with pytest.raises(MetricInputError, match="id 1 has 2 boxes in timestep 1"):
        evaluate_tracks(_table([(1, 1, BOX)]), pred)


def _fabricate(seed: int, frames: int = 40, people: int = 6) -> tuple[MotTable, MotTable]:
    """Ground truth of people walking; tracker output with jitter, misses, false boxes and id switches."""
    rng = np.random.default_rng(seed)
    gt_rows, pred_rows = [], []
    start = rng.uniform(0, 400, (people, 2))
    speed = rng.uniform(-4, 4, (people, 2))
    alive = [(int(rng.integers(1, frames // 2)), int(rng.integers(frames // 2, frames + 1))) for _ in range(people)]
    pred_id = {p: p + 1 for p in range(people)}
    next_id = people + 1
    for t in range(1, frames + 1):
        for p in range(people):
            if not alive[p][0] <= t <= alive[p][1]:
                continue
            box = [*(start[p] + speed[p] * t), 30, 80]
            gt_rows.append((t, p + 1, box))
            if rng.random() < 0.03:  # the tracker starts a new id for this person
                pred_id[p], next_id = next_id, next_id + 1
            if rng.random() < 0.1:  # missed
                continue
            jitter = rng.normal(0, 3, 4) * [1, 1, 0.5, 0.5]
            pred_rows.append((t, pred_id[p], list(np.asarray(box) + jitter)))
        if rng.random() < 0.3:  # a false box
            pred_rows.append((t, 1000 + t, [*rng.uniform(0, 400, 2), 30, 80]))
    if rng.random() < 1.0:  # two people swap ids for a stretch
        swap = [(t, {1: 2, 2: 1}.get(i, i), b) if 15 <= t <= 20 else (t, i, b) for t, i, b in pred_rows]
        pred_rows = swap
    return _table(gt_rows), _table(pred_rows)


def _distance_loop(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - IoU of (x, y, w, h) boxes, NaN above 0.5 (motmetrics' convention), by a plain loop. (motmetrics'
    own iou_matrix calls np.asfarray, gone in NumPy 2.)"""
    out = np.full((len(a), len(b)), np.nan)
    for i, (ax, ay, aw, ah) in enumerate(a):
        for j, (bx, by, bw, bh) in enumerate(b):
            iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
            ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
            distance = 1 - iw * ih / (aw * ah + bw * bh - iw * ih)
            out[i, j] = distance if distance <= 0.5 else np.nan
    return out


def _motmetrics(gt: MotTable, pred: MotTable) -> dict:
    mm = pytest.importorskip("motmetrics")
    acc = mm.MOTAccumulator(auto_id=False)
    for t in range(1, max(gt.num_frames, pred.num_frames) + 1):
        g, p = gt.at(t), pred.at(t)
        acc.update(g.ids, p.ids, _distance_loop(g.boxes, p.boxes), frameid=t)
    names = ["idf1", "idp", "idr", "mota", "motp", "num_switches", "num_false_positives", "num_misses",
             "idtp", "idfp", "idfn"]
    return mm.metrics.create().compute(acc, metrics=names, name="seq").iloc[0].to_dict()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_motmetrics(seed):
    gt, pred = _fabricate(seed)
    ours, ref = evaluate_tracks(gt, pred), _motmetrics(gt, pred)
    assert ours["IDF1"] == pytest.approx(100 * ref["idf1"], abs=1e-6)
    assert ours["IDP"] == pytest.approx(100 * ref["idp"], abs=1e-6)
    assert ours["IDR"] == pytest.approx(100 * ref["idr"], abs=1e-6)
    assert (ours["IDTP"], ours["IDFP"], ours["IDFN"]) == (ref["idtp"], ref["idfp"], ref["idfn"])
    assert (ours["FP"], ours["FN"], ours["IDSW"]) == (ref["num_false_positives"], ref["num_misses"],
                                                      ref["num_switches"])
    assert ours["MOTA"] == pytest.approx(100 * ref["mota"], abs=1e-6)
    assert ours["MOTP"] == pytest.approx(100 * (1 - ref["motp"]), abs=1e-6)  # motmetrics: mean 1 - IoU


def test_cross_camera_idf1_by_hand():
    # Person 7 walks through cameras a and b (2 frames each); so does person 8 in b only.
    gt = {"a": _table([(1, 7, BOX), (2, 7, BOX)]),
          "b": _table([(1, 7, BOX), (2, 7, BOX), (1, 8, [50, 0, 10, 20]), (2, 8, [50, 0, 10, 20])])}
    # Each camera is tracked perfectly, but 7 gets id 1 in a and id 2 in b: across cameras it is split.
    split = {"a": _table([(1, 1, BOX), (2, 1, BOX)]),
             "b": _table([(1, 2, BOX), (2, 2, BOX), (1, 3, [50, 0, 10, 20]), (2, 3, [50, 0, 10, 20])])}
    r = evaluate_multicamera(gt, split)
    assert r["cameras"]["a"]["IDF1"] == 100 and r["cameras"]["b"]["IDF1"] == 100 and r["combined"]["IDF1"] == 100
    # Global matching: 7 <-> 1 (or 2): IDTP 2 + (8 <-> 3) 2 = 4; IDFN 2, IDFP 2 -> IDF1 = 8 / (8 + 2 + 2).
    assert (r["cross_camera"]["IDTP"], r["cross_camera"]["IDFN"], r["cross_camera"]["IDFP"]) == (4, 2, 2)
    assert r["cross_camera"]["IDF1"] == pytest.approx(200 / 3)
    joined = {"a": split["a"], "b": _table([(t, {2: 1}.get(i, i), b) for t, i, b in
                                            zip(split["b"].frames, split["b"].ids, split["b"].boxes.tolist())])}
    assert evaluate_multicamera(gt, joined)["cross_camera"]["IDF1"] == pytest.approx(100.0)
    missing = evaluate_multicamera(gt, {"a": split["a"]})  # camera b not tracked at all: its 4 boxes are missed
    assert missing["cameras"]["b"]["FN"] == 4 and missing["cross_camera"]["IDFN"] == 4


def test_cross_camera_matches_motmetrics_on_the_concatenation():
    """Independent check of the definition: motmetrics over one sequence of (camera, frame) timesteps."""
    cams = {f"c{k}": _fabricate(10 + k, frames=20) for k in range(3)}
    ours = evaluate_multicamera({c: g for c, (g, _) in cams.items()}, {c: p for c, (_, p) in cams.items()})
    offset, gt_rows, pred_rows = 0, [], []
    for c in sorted(cams):
        g, p = cams[c]
        gt_rows += [(f + offset, i, b) for f, i, b in zip(g.frames, g.ids, g.boxes.tolist())]
        pred_rows += [(f + offset, i, b) for f, i, b in zip(p.frames, p.ids, p.boxes.tolist())]
        offset += max(g.num_frames, p.num_frames)
    ref = _motmetrics(_table(gt_rows), _table(pred_rows))
    assert ours["cross_camera"]["IDF1"] == pytest.approx(100 * ref["idf1"], abs=1e-6)
    assert ours["cross_camera"]["IDTP"] == ref["idtp"]


def test_evaluate_tracks_cli_one_sequence_and_a_run_folder(tmp_path, capsys):
    import json

    from reidkit.cli.main import main
    from reidkit.data.mot import write_mot

    gt = _table([(1, 5, BOX), (2, 5, BOX), (3, 5, BOX)])
    pred = _table([(1, 1, BOX), (2, 1, BOX), (2, 3, [100, 100, 10, 20]), (3, 2, BOX)])
    for camera, table in (("cam1", gt), ("cam2", gt)):
        write_mot(tmp_path / "gt" / camera / "gt" / "gt.txt", table, gt=True)
    for camera in ("cam1", "cam2"):
        write_mot(tmp_path / "run" / camera / "tracks.txt", pred)
    assert main(["evaluate-tracks", "--gt", str(tmp_path / "gt" / "cam1"), "--pred",
                 str(tmp_path / "run" / "cam1" / "tracks.txt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["IDF1"] == pytest.approx(100 * 4 / 7) and report["metrics"]["IDSW"] == 1
    out = tmp_path / "metrics.json"
    assert main(["evaluate-tracks", "--gt-dir", str(tmp_path / "gt"), "--pred", str(tmp_path / "run"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cam1" in text and "cam2" in text and "all cameras" in text and "cross-camera" in text
    saved = json.loads(out.read_text())
    # Both cameras: person 5 <-> tracker id 1 in frames 1-2 of each camera (IDTP 4 of 6 gt boxes, 8 predictions).
    assert saved["cross_camera"]["IDTP"] == 4 and saved["cross_camera"]["IDF1"] == pytest.approx(100 * 8 / 14)
    assert main(["evaluate-tracks", "--gt", str(tmp_path / "nope.txt"), "--pred", str(out)]) == 2
    assert "nope.txt" in capsys.readouterr().err


def _official_trackeval(root, gt_lines: str, pred_lines: str, frames: int) -> dict:
    """TrackEval's own MOTChallenge evaluator (files in its folder layout): the reference for the preprocessing."""
    import trackeval

    seq = root / "gt" / "MOT17-train" / "SEQ"
    (seq / "gt").mkdir(parents=True)
    (seq / "gt" / "gt.txt").write_text(gt_lines)
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname=SEQ\nimDir=img1\nframeRate=10\nseqLength={frames}\n"
                                     "imWidth=640\nimHeight=480\nimExt=.jpg\n")
    (root / "seqmaps").mkdir()
    (root / "seqmaps" / "MOT17-train.txt").write_text("name\nSEQ\n")
    (root / "trackers" / "MOT17-train" / "t" / "data").mkdir(parents=True)
    (root / "trackers" / "MOT17-train" / "t" / "data" / "SEQ.txt").write_text(pred_lines)
    config = trackeval.datasets.MotChallenge2DBox.get_default_dataset_config()
    config.update(GT_FOLDER=str(root / "gt"), TRACKERS_FOLDER=str(root / "trackers"),
                  SEQMAP_FOLDER=str(root / "seqmaps"), BENCHMARK="MOT17", SPLIT_TO_EVAL="train",
                  TRACKERS_TO_EVAL=["t"], PRINT_CONFIG=False)
    evaluator = trackeval.Evaluator({"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                                     "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False,
                                     "TIME_PROGRESS": False, "DISPLAY_LESS_PROGRESS": True})
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(), trackeval.metrics.Identity()]
    results, _ = evaluator.evaluate([trackeval.datasets.MotChallenge2DBox(config)], metrics)
    return results["MotChallenge2DBox"]["t"]["SEQ"]["pedestrian"]


def test_mot17_file_evaluation_matches_trackevals_official_evaluator(tmp_path, capsys):
    """Pedestrians, a static person (class 7, a distractor), a reflection (12), a pedestrian not to be considered and
    a car (3); the tracker follows all of them with jitter, misses and a switch. The official evaluator removes
    tracker boxes on distractors; `reidkit evaluate-tracks` must give the same numbers."""
    import json

    from reidkit.cli.main import main

    rng = np.random.default_rng(7)
    kinds = [(1, 1), (1, 1), (1, 1), (1, 7), (1, 12), (0, 1), (0, 3)]  # (consider, class) of objects 1..7
    gt_lines, pred_lines = [], []
    for t in range(1, 21):
        for obj, (consider, cls) in enumerate(kinds, start=1):
            x, y = 40 + 80 * obj + 2 * t, 100 + 5 * obj
            gt_lines.append(f"{t},{obj},{x},{y},40,100,{consider},{cls},1.0")
            if rng.random() < 0.15:
                continue
            track = obj + (10 if obj == 2 and t > 12 else 0)  # object 2 switches id at frame 13
            dx, dy = rng.normal(0, 3, 2)
            pred_lines.append(f"{t},{track},{x + dx:.2f},{y + dy:.2f},40,100,1,-1,-1,-1")
        if rng.random() < 0.3:
            pred_lines.append(f"{t},99,{rng.uniform(0, 600):.2f},300,40,100,1,-1,-1,-1")  # a false box
    gt_text, pred_text = "\n".join(gt_lines) + "\n", "\n".join(pred_lines) + "\n"
    ref = _official_trackeval(tmp_path / "official", gt_text, pred_text, 20)
    capsys.readouterr()  # TrackEval prints its progress
    (tmp_path / "gt.txt").write_text(gt_text)
    (tmp_path / "tracks.txt").write_text(pred_text)
    assert main(["evaluate-tracks", "--gt", str(tmp_path / "gt.txt"), "--pred", str(tmp_path / "tracks.txt"),
                 "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["metrics"]
    assert ours["HOTA"] == pytest.approx(100 * np.mean(ref["HOTA"]["HOTA"]), abs=1e-9)
    assert ours["MOTA"] == pytest.approx(100 * ref["CLEAR"]["MOTA"], abs=1e-9)
    assert ours["IDF1"] == pytest.approx(100 * ref["Identity"]["IDF1"], abs=1e-9)
    assert (ours["FP"], ours["FN"], ours["IDSW"]) == (ref["CLEAR"]["CLR_FP"], ref["CLEAR"]["CLR_FN"],
                                                      ref["CLEAR"]["IDSW"])
    assert ours["FP"] < sum(1 for line in pred_lines if int(line.split(",")[1]) in (4, 5, 6, 7, 99))  # some dropped
