"""Screenshots for docs/web.md: runs the browser test (tests/test_web_browser.py) and copies its screenshots.

    .venv/bin/python bench/web_screenshots.py [--model runs/recipe60/best.pt]

The test writes its screenshots into its tmp_path; this script runs it with a fixed --basetemp (bench/out/) and
REIDKIT_WEB_TEST_MODEL set to a trained model (default: the best of runs/recipe60, runs/emb_val) so the pictures
show meaningful scores, then stores them as small palette PNGs in docs/images/web_*.png.
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
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    base = ROOT / "bench" / "out" / "web_browser"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if args.model is not None:
        env["REIDKIT_WEB_TEST_MODEL"] = str(args.model)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_web_browser.py",
                    f"--basetemp={base}"], cwd=ROOT, env=env, check=True)
    shots = sorted(base.glob("*/screenshots/web_*.png"))
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
