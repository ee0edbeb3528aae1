"""LOMO features (reidkit.classic.lomo): the paper's dimension, and values worked out by hand for hand-made images
(a constant colour, a vertical step edge, a small code map), HSV against the standard library's colorsys."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from reidkit.classic import LOMO
from reidkit.classic.lomo import pool2x2, rgb_to_hsv, siltp, strip_max_histograms
from reidkit.errors import DataError, ReIDError

STRIPS = 24 + 11 + 5  # 10x10 windows, stride 5, on 128x48, 64x24, 32x12: (H - 10) // 5 + 1 top rows each


def test_dimension_is_the_papers():
    lomo = LOMO()
    assert lomo.dim == (8 * 8 * 8 + 2 * 81) * STRIPS == 26_960
    images = np.random.default_rng(0).integers(0, 256, size=(2, 128, 48, 3), dtype=np.uint8)
    features = lomo(images)
    assert features.shape == (2, 26_960) and features.dtype == np.float32
    blocks = np.split(features, [512 * STRIPS, 512 * STRIPS + 81 * STRIPS], axis=1)  # HSV, SILTP R=3, SILTP R=5
    for block in blocks:
        np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1.0, rtol=1e-5)


def test_constant_colour_puts_all_mass_in_one_bin_per_strip():
    """RGB (200, 40, 40): H = 0, S = 160/200 = 0.8 -> bin 6, V = 200/255 = 0.78 -> bin 6; joint code
    V*64 + S*8 + H = 432 holds all 100 pixels of every window; SILTP of a flat image is code 0 everywhere. After
    log(1 + 100) and L2 normalisation over 40 equal entries, each is 1/sqrt(40). (A flat image has no contrast
    for Retinex to restore: its colour is kept.)"""
    image = np.zeros((1, 128, 48, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 40, 40
    expected = np.zeros(26_960)
    strips = np.arange(STRIPS)
    expected[strips * 512 + 432] = 1 / np.sqrt(40)
    expected[512 * STRIPS + strips * 81] = 1 / np.sqrt(40)
    expected[512 * STRIPS + 81 * STRIPS + strips * 81] = 1 / np.sqrt(40)
    np.testing.assert_allclose(LOMO()(image)[0], expected, atol=1e-6)


def test_siltp_codes_of_a_vertical_step_edge():
    """Left half 0.2, right half 0.8, radius 3, tau 0.3. Dark pixels within 3 columns of the edge see a brighter
    right neighbour (0.8 > 1.3 x 0.2): digit 2 x weight 1 = 2. Bright pixels within 3 columns see a darker left
    neighbour (0.2 < 0.7 x 0.8): digit 1 x weight 9 = 9. Up / down neighbours (replicated border) are equal: 0."""
    image = np.full((1, 12, 12), 0.2)
    image[:, :, 6:] = 0.8
    expected_row = np.array([0, 0, 0, 2, 2, 2, 9, 9, 9, 0, 0, 0])
    np.testing.assert_array_equal(siltp(image, tau=0.3, radius=3)[0], np.tile(expected_row, (12, 1)))


def test_siltp_tolerance_band():
    """A neighbour within +-tau of the centre is 'equal' (0); just outside it counts."""
    image = np.full((1, 7, 7), 0.5)
    image[0, 3, 6] = 0.5 * 1.29  # right neighbour of the centre at radius 3: inside the band
    image[0, 0, 3] = 0.5 * 0.69  # upper neighbour: below (1 - tau) x centre -> 1 x weight 3
    codes = siltp(image, tau=0.3, radius=3)
    assert codes[0, 3, 3] == 3


def test_strip_max_histograms_by_hand():
    """15x15 codes, 10x10 windows at stride 5: top rows 0 and 5, left columns 0 and 5.
    Code 1 in rows 0-4 x cols 10-14, code 2 in rows 5-9 x cols 0-4, else 0.
    Strip 0: windows [75, 0, 25] and [75, 25, 0] -> max [75, 25, 25];
    strip 1: windows [75, 0, 25] and [100, 0, 0] -> max [100, 0, 25]."""
    codes = np.zeros((1, 15, 15), dtype=np.int64)
    codes[0, 0:5, 10:15] = 1
    codes[0, 5:10, 0:5] = 2
    np.testing.assert_array_equal(strip_max_histograms(codes, 3, block=10, step=5)[0], [[75, 25, 25], [100, 0, 25]])


def test_hsv_matches_colorsys():
    rgb = np.random.default_rng(1).random((50, 3))
    rgb[0] = [0.3, 0.3, 0.3]  # grey: hue 0
    rgb[1] = 0.0
    expected = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in rgb])
    np.testing.assert_allclose(rgb_to_hsv(rgb), expected, atol=1e-12)


def test_pooling_floors_bin_indices_and_drops_odd_edges():
    bins = np.array([[[0, 1, 5], [3, 3, 5], [7, 7, 7]]])  # 3x3: the last row and column are dropped
    np.testing.assert_array_equal(pool2x2(bins, floor=True), [[[1]]])  # floor((0 + 1 + 3 + 3) / 4)
    np.testing.assert_allclose(pool2x2(bins.astype(float)), [[[1.75]]])


def test_bad_input(tmp_path):
    with pytest.raises(ReIDError, match="images is empty"):
        LOMO()([])
    with pytest.raises(ReIDError, match="must be uint8"):
        LOMO()(np.zeros((1, 64, 32, 3), dtype=np.uint8))
    missing = tmp_path / "0001_c1_000.jpg"
    with pytest.raises(DataError, match="0001_c1_000.jpg"):
        LOMO()([str(missing)])
    with pytest.raises(ReIDError, match="smaller than one 10x10 window"):
        LOMO(size=(8, 48))
