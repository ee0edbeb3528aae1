"""`reidkit track` with per-camera Dask workers (reidkit.video.workers): a real LocalCluster of 2 worker processes is
started here (and closed), and the outputs of a distributed run are compared with the single-process run on the same
synthetic multi-camera video (reidkit.data.synth_video; detections = the ground-truth boxes, appearance = a
per-crop colour descriptor, so every number is independent of batching). A worker process that dies mid-camera
must end the run with an error naming the camera, quickly, with the tracklets received so far written."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from reidkit.errors import ReIDError
from reidkit.video.association import AssociationConfig, tracklet_idf1
from reidkit.video.pipeline import TrackOptions, track

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # worker processes need not import this test module


class HalvesColour:
    """Features = mean colour of the upper and lower half of the crop minus mid-grey (shirt and trousers)."""

    name, backend, input_size, resize, dim = "halves", "test", (16, 8), "stretch", 6

    def embed_uint8(self, images, show_progress=False):
        x = np.asarray(images, np.float64)
        h = x.shape[2] // 2
        f = np.concatenate([x[:, :, :h].mean(axis=(2, 3)), x[:, :, h:].mean(axis=(2, 3))], axis=1) - 128.0
        return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-9)).astype(np.float32)

    def embed(self, images, show_progress=False):
        import cv2

        arrays = [cv2.resize(np.asarray(i), (8, 16)) for i in images]
        return self.embed_uint8(np.stack(arrays).transpose(0, 3, 1, 2))


class DyingDetector:
    """Public detections that kill their worker process (os._exit, like an OOM kill) at a given frame."""

    def __init__(self, det_txt: str, die_at: int):
        self.det_txt, self.die_at = det_txt, die_at

    def detect(self, images, frame_indices=None):
        from reidkit.video.detect import build_detector

        if max(frame_indices) >= self.die_at:
            os._exit(1)
        return build_detector(self.det_txt).detect(images, frame_indices)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> list[Path]:
    """3 synthetic cameras, 8 people, 16 s at 5 fps, 256x144; det/det.txt = each camera's gt boxes."""
    from reidkit.data.synth_video import SynthVideoConfig, generate_synth_video

    root = generate_synth_video(tmp_path_factory.mktemp("site") / "video",
                                SynthVideoConfig(cameras=3, people=8, seconds=16, fps=5, width=256, height=144,
                                                 seed=3), show_progress=False)
    cams = sorted(p for p in root.iterdir() if (p / "gt" / "gt.txt").is_file())
    for cam in cams:
        rows = np.loadtxt(cam / "gt" / "gt.txt", delimiter=",", ndmin=2)[:, :7]
        rows[:, 1], rows[:, 6] = -1, 0.95
        (cam / "det").mkdir()
        np.savetxt(cam / "det" / "det.txt", rows, delimiter=",", fmt="%g")
    return cams


@pytest.fixture(scope="module")
def cluster():
    """A real LocalCluster: 2 worker processes, 1 thread each, loopback only; closed after the module."""
    from reidkit.video.workers import start_local_cluster

    client, local = start_local_cluster(2)
    yield local
    client.close()
    local.close()


def _run(site, out, online, **kw):
    options = TrackOptions(association=AssociationConfig(threshold=0.02), online=online, video=False)
    return track([str(s) for s in site], out, model=HalvesColour(), detector=kw.pop("detector", "public"),
                 options=options, show_progress=False, **kw)


def _tracks(out: Path, camera: str) -> np.ndarray:
    path = out / camera / "tracks.txt"
    return np.loadtxt(path, delimiter=",", ndmin=2) if path.stat().st_size else np.zeros((0, 10))


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_workers_give_the_single_process_outputs(site, cluster, tmp_path, online):
    one = _run(site, tmp_path / "one", online)
    many = _run(site, tmp_path / "many", online, scheduler=cluster.scheduler_address)
    assert one.num_tracklets == many.num_tracklets > 10 and one.num_identities == many.num_identities
    for seq in site:  # every row: frame, global id, box, confidence
        a, b = _tracks(tmp_path / "one", seq.name), _tracks(tmp_path / "many", seq.name)
        assert len(a) > 0 and np.array_equal(a, b)
    docs = [json.loads((tmp_path / run / "identities.json").read_text()) for run in ("one", "many")]
    assert docs[0]["identities"] == docs[1]["identities"] and docs[1]["complete"] is True
    assert sorted(p.name for p in (tmp_path / "one" / "crops").glob("*.jpg")) == \
        sorted(p.name for p in (tmp_path / "many" / "crops").glob("*.jpg"))
    summaries = [json.loads((tmp_path / run / "summary.json").read_text())["cameras"] for run in ("one", "many")]
    assert summaries[0] == summaries[1]
    assert many.workers["association_latency_seconds"]["count"] == many.num_tracklets
    assert sorted(many.workers["cameras"]) == [s.name for s in site]
    # an independent check of the ids themselves: tracklets of one ground-truth person share one global id
    truth, labels, weights = _tracklet_truth(site, tmp_path / "many")
    assert tracklet_idf1(labels, truth, weights) > 60.0


def _tracklet_truth(site, out):
    """Per predicted (camera, global id) tracklet: the ground-truth id covering most of its boxes (exact box match)."""
    truth, labels, weights = [], [], []
    for seq in site:
        gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2)
        pred = _tracks(out, seq.name)
        gt_ids = {(int(r[0]), *np.round(r[2:6], 1)): int(r[1]) for r in gt}
        for gid in np.unique(pred[:, 1]):
            rows = pred[pred[:, 1] == gid]
            ids = [gt_ids.get((int(r[0]), *np.round(r[2:6], 1)), -1) for r in rows]
            values, counts = np.unique(ids, return_counts=True)
            truth.append(int(values[np.argmax(counts)]))
            labels.append(int(gid))
            weights.append(len(rows))
    return np.asarray(truth), np.asarray(labels), np.asarray(weights, float)


def test_unreachable_scheduler_is_refused_before_writing(site, small_checkpoint, tmp_path, capsys):
    from reidkit.cli.main import main

    argv = [str(s) for s in site] + ["--model", str(small_checkpoint), "--detector", "public", "--quiet"]
    assert main(["track", *argv, "--out", str(tmp_path / "a"), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "--scheduler tcp://127.0.0.1:1: cannot connect" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit):
        main(["track", *argv, "--out", str(tmp_path / "a"), "--workers", "-1"])
    assert "--workers: -1: must be >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_workers_with_a_real_model(site, cluster, small_checkpoint, tmp_path, capsys):
    from reidkit.cli.main import main

    argv = [str(s) for s in site] + ["--model", str(small_checkpoint), "--detector", "public", "--no-video",
                                     "--quiet"]
    for name, extra in (("one", []), ("many", ["--scheduler", cluster.scheduler_address])):
        assert main(["track", *argv, "--out", str(tmp_path / name), *extra]) == 0
    out = capsys.readouterr().out
    assert out.count("global identities from") == 2
    # a real model on the workers: same rows; ids equal up to renaming where embeddings differ in the last bits
    for seq in site:
        a, b = _tracks(tmp_path / "one", seq.name), _tracks(tmp_path / "many", seq.name)
        assert np.array_equal(a[:, [0, 2, 3, 4, 5, 6]], b[:, [0, 2, 3, 4, 5, 6]])
        assert tracklet_idf1(b[:, 1], a[:, 1]) >= 99.0


def test_a_dying_worker_fails_the_run_naming_the_camera(site, cluster, tmp_path):
    from reidkit.video.detect import build_detector

    dets = [str(s / "det" / "det.txt") for s in site]
    detectors = [build_detector(dets[0]), DyingDetector(dets[1], die_at=40), build_detector(dets[2])]
    started = time.monotonic()
    with pytest.raises(ReIDError, match=f"camera {site[1].name}: its worker process died"):
        _run(site, tmp_path / "dead", True, detector=detectors, scheduler=cluster.scheduler_address)
    assert time.monotonic() - started < 60  # no hang
    doc = json.loads((tmp_path / "dead" / "identities.json").read_text())
    assert doc["complete"] is False
    summary = json.loads((tmp_path / "dead" / "summary.json").read_text())
    assert any("worker process died" in note for note in summary["notes"])
