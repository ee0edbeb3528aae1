"""Sample grid for docs/synthetic.md: eight synthetic identities, two images from each of three cameras.

Run: .venv/bin/python bench/make_synth_samples.py  -> docs/img/synth_samples.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from reidkit.data.synth import SynthConfig, render_identity_images

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "img" / "synth_samples.png"
CFG = SynthConfig(num_cameras=3, seed=0)
NUM_IDS, PER_CAMERA, IDS_PER_BLOCK = 8, 2, 4
GAP, HEADER = 4, 14


def main() -> None:
    batch = render_identity_images(list(range(1, NUM_IDS + 1)), CFG, images_per_camera=PER_CAMERA)
    h, w = CFG.height, CFG.width
    per_id = CFG.num_cameras * PER_CAMERA
    block_w = per_id * w + (CFG.num_cameras - 1) * GAP
    canvas = Image.new("RGB", (2 * block_w + 3 * GAP, HEADER + IDS_PER_BLOCK * (h + GAP)), "white")
    draw = ImageDraw.Draw(canvas)
    for block in range(NUM_IDS // IDS_PER_BLOCK):
        left = GAP + block * (block_w + GAP)
        for cam in range(CFG.num_cameras):
            draw.text((left + cam * (PER_CAMERA * w + GAP) + 4, 1), f"camera {cam + 1}", fill="black")
        for row in range(IDS_PER_BLOCK):
            first = (block * IDS_PER_BLOCK + row) * per_id
            for k in range(per_id):
                x, y = left + k * w + (k // PER_CAMERA) * GAP, HEADER + row * (h + GAP)
                canvas.paste(Image.fromarray(np.ascontiguousarray(batch.images[first + k])), (x, y))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(OUT, optimize=True)
    print(f"wrote {OUT} ({canvas.width}x{canvas.height})")


if __name__ == "__main__":
    main()
