"""Screenshots for docs/web.md: runs the browser test (tests/test_web_browser.py) and copies its screenshots.

    .venv/bin/python bench/web_screenshots.py [--model runs/emb_val/best.pt] [--run RUN]

The test writes its screenshots into its tmp_path; this script runs it with a fixed --basetemp (bench/out/),
REIDKIT_WEB_TEST_MODEL set to a trained model (default: the first of runs/recipe60, runs/emb_val) and, with --run,
REIDKIT_WEB_TEST_RUN set to a real `reidkit track` output folder (served with its tracklet gallery as the index),
so the pictures show real results; then stores them as small palette PNGs in docs/images/web_*.png.
The run in docs/web.md was made with (runs/h5/emb_cal.pt: a copy of runs/h3/emb.pt, the runs/emb_val embedding
with the calibration `reidkit calibrate` fitted on the 150 CUHK03-NP validation identities):

    reidkit synth-video --out runs/h5/video --cameras 2 --people 8 --seconds 30 --fps 5 \
        --crops ../shared/datasets/cuhk03np-detected/bounding_box_train
    reidkit track runs/h5/video/cam1 runs/h5/video/cam2 --out runs/h5/run_cal --model runs/h5/emb_cal.pt --no-video
    .venv/bin/python bench/web_screenshots.py --model runs/h5/emb_cal.pt --run runs/h5/run_cal

(`--clusters DIR` serves a real `reidkit cluster` output instead of the run's crops grouped by global id; on these
crops `reidkit cluster runs/h5/run/crops --model runs/emb_val/best.pt` put all 19 in one cluster at thresholds
0.3 to 0.55, so the documentation shows the grouping by global id.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = (ROOT / "runs" / "recipe60" / "best.pt", ROOT / "runs" / "emb_val" / "best.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=next((p for p in CANDIDATES if p.is_file()), None))
    parser.add_argument("--run", type=Path, help="a `reidkit track` output folder to serve")
    parser.add_argument("--clusters", type=Path, help="a `reidkit cluster` output folder to serve")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    base = ROOT / "bench" / "out" / "web_browser"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if args.model is not None:
        env["REIDKIT_WEB_TEST_MODEL"] = str(args.model.resolve())
    if args.run is not None:
        env["REIDKIT_WEB_TEST_RUN"] = str(args.run.resolve())
    if args.clusters is not None:
        env["REIDKIT_WEB_TEST_CLUSTERS"] = str(args.clusters.resolve())
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_web_browser.py",
                    f"--basetemp={base}"], cwd=ROOT, env=env, check=True)
    shots = sorted({p.resolve() for p in base.glob("*/screenshots/web_*.png")})  # pytest links *current
    if not shots:
        raise SystemExit(f"no screenshots under {base} (was the browser test skipped?)")
    args.out.mkdir(parents=True, exist_ok=True)
    for shot in shots:
        image = Image.open(shot).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        target = args.out / shot.name
        image.save(target, optimize=True)
        print(f"{target}: {target.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
