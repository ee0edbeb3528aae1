"""R-MAC pooling (reidkit.models.pooling.RMAC) against a naive loop over a region grid worked out by hand."""

from __future__ import annotations

import pytest
import torch

from reidkit.errors import ModelError
from reidkit.models import build_model
from reidkit.models.pooling import RMAC, build_pooling, rmac_regions

# An 8 x 4 map (a 256 x 128 person crop at stride 32), L = 3. Short side w = 4; along the long side, b = 4 / (k - 1)
# for k = 2..7 regions gives level-1 overlaps 1 - b / 4 = 0, .5, .67, ...: 3 regions (overlap .5) are closest to
# 40 %, so 2 extra along the height.
# l = 1: side floor(8 / 2) = 4; tops floor(1 + i * 2) - 1 = 0, 2, 4; left 0.
# l = 2: side floor(8 / 3) = 2; tops 0, 2, 4, 6 (step 6 / 3); lefts 0, 2 (step 2 / 1).
# l = 3: side floor(8 / 4) = 2; tops floor(i * 1.5) = 0, 1, 3, 4, 6; lefts 0, 1, 2.
HAND_REGIONS_8x4 = ([(t, 0, 4) for t in (0, 2, 4)] + [(t, c, 2) for t in (0, 2, 4, 6) for c in (0, 2)]
                    + [(t, c, 2) for t in (0, 1, 3, 4, 6) for c in (0, 1, 2)])


def naive_rmac(x: torch.Tensor, regions, eps: float = 1e-6) -> torch.Tensor:
    out = torch.zeros(x.shape[:2], dtype=x.dtype)
    for n in range(x.shape[0]):
        total = torch.zeros(x.shape[1], dtype=x.dtype)
        for top, left, side in regions:
            vector = torch.tensor([float(x[n, c, top:top + side, left:left + side].max()) for c in range(x.shape[1])],
                                  dtype=x.dtype)
            total += vector / (vector.norm() + eps)
        out[n] = total / (total.norm() + eps)
    return out


def test_region_grid_matches_the_hand_computed_one():
    assert sorted(rmac_regions(8, 4, 3)) == sorted(HAND_REGIONS_8x4)
    # A wide map is the transpose. A square 6 x 6 map has no extra regions: 1 + 4 + 9. Level 2: side 4, starts
    # floor(1 + i * 2) - 1 = 0, 2; level 3: side 3, starts floor(i * 1.5) = 0, 1, 3.
    assert sorted(rmac_regions(4, 8, 3)) == sorted((left, top, side) for top, left, side in HAND_REGIONS_8x4)
    assert rmac_regions(6, 6, 3) == ((0, 0, 6), *((t, c, 4) for t in (0, 2) for c in (0, 2)),
                                     *((t, c, 3) for t in (0, 1, 3) for c in (0, 1, 3)))


@pytest.mark.parametrize("shape", [(2, 5, 8, 4), (1, 3, 4, 8), (2, 4, 7, 7)])
def test_matches_a_naive_loop_over_regions(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    regions = HAND_REGIONS_8x4 if shape[2:] == (8, 4) else rmac_regions(*shape[2:], 3)
    torch.testing.assert_close(build_pooling("rmac")(x), naive_rmac(x, regions), rtol=1e-10, atol=1e-10)


def test_rmac_in_the_embedding_model_trains():
    torch.manual_seed(0)
    model = build_model("embedding", backbone="simple_cnn", backbone_options={"width": 8}, pooling="rmac",
                        num_classes=3, input_size=(64, 32))
    assert isinstance(model.pool, RMAC)
    model.train()
    out = model(torch.randn(4, 3, 64, 32))
    logits = out["logits"] if isinstance(out, dict) else out[0]
    logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_bad_levels():
    with pytest.raises(ModelError, match="levels=0"):
        RMAC(levels=0)
