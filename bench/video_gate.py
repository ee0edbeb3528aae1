"""The tracker's appearance gate (`TrackerConfig.appearance_gate_iou`) on real video: `reidkit track` end to end on
TUD-Campus (71 frames, 8 people; the default detector and the public det.txt) with the gate always on (1.0, the
old behaviour) and lifted where the IoU with the predicted box is at least 0.3 / 0.5 / 0.7. Appearance: Intel's
0277 (vendored). Scores by TrackEval (reidkit.metrics.tracking) on tracks.txt. Writes the "tud_gate" section of
docs/benchmarks/video_tracking.json.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/video_gate.py
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from reidkit.data.mot import read_gt, read_mot
from reidkit.metrics.tracking import evaluate_tracks
from reidkit.models.backbones.intel_import import vendored_weights
from reidkit.utils import atomic_write_json
from reidkit.video.association import AssociationConfig
from reidkit.video.pipeline import TrackOptions, track
from reidkit.video.tracker import TrackerConfig

ROOT = Path(__file__).resolve().parents[1]
TUD = ROOT.parent / "shared" / "datasets" / "mot" / "TUD-Campus"
OUT = ROOT / "docs" / "benchmarks" / "video_tracking.json"


def main() -> None:
    model = vendored_weights("osnet_ain_x1_0")
    gt = read_gt(TUD / "gt" / "gt.txt")
    rows = []
    load = os.getloadavg()[0]
    for detector in ("default", "public"):
        for gate in (1.0, 0.7, 0.5, 0.3):
            base = TrackerConfig.for_public_detections() if detector == "public" else TrackerConfig()
            tracker = TrackerConfig(**{**base.__dict__, "appearance_gate_iou": gate})
            with tempfile.TemporaryDirectory() as tmp:
                track([str(TUD)], Path(tmp) / "run", model=str(model), detector=detector, show_progress=False,
                      options=TrackOptions(association=AssociationConfig(), video=False, crops=False,
                                           tracker=tracker))
                pred = read_mot(Path(tmp) / "run" / "TUD-Campus" / "tracks.txt")
            scores = evaluate_tracks(gt, pred)
            row = {"detections": "adas-0002" if detector == "default" else "public det.txt", "gate_iou": gate,
                   **{k: round(float(scores[k]), 1) for k in ("HOTA", "IDF1", "MOTA")},
                   "ids": int(len(set(pred.ids.tolist())))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    data["tud_gate"] = {"rows": rows, "model": "Intel 0277 (vendored)", "load_avg_1min": round(load, 2),
                        "command": "bench/video_gate.py"}
    atomic_write_json(data, OUT)


if __name__ == "__main__":
    main()
