"""Augmentation, P x K sampler and config loading against plain-loop / hand-computed references."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reidkit.config import load_config
from reidkit.data.sampler import PKSampler
from reidkit.data.transforms import AugmentConfig, BatchAugment, _random_erase, _random_translate, resize_image
from reidkit.errors import ConfigError


def test_random_translate_equals_loop_crop_of_padded_image():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 8, 6)
    gen = torch.Generator().manual_seed(7)
    out = _random_translate(x, pad=2, generator=gen)
    ref_gen = torch.Generator().manual_seed(7)
    dy = torch.randint(0, 5, (5,), generator=ref_gen)
    dx = torch.randint(0, 5, (5,), generator=ref_gen)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(5):
        expected = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 6]
        assert torch.equal(out[i], expected)


def test_random_erase_one_rectangle_within_area_bounds():
    x = torch.zeros(200, 1, 40, 20)
    out = _random_erase(x, prob=1.0, min_area=0.05, max_area=0.2, generator=torch.Generator().manual_seed(1))
    erased = out != 0
    for i in range(200):
        ys, xs = torch.nonzero(erased[i, 0], as_tuple=True)
        area = len(ys)
        # one solid rectangle: its bounding box is fully erased
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert area == box
        assert area <= 0.2 * 800 * 1.5 + 40  # rounding of sides can exceed the target a little


def test_cutout_curriculum_grows_linearly():
    aug = BatchAugment(AugmentConfig(erasing_area_start=0.1, erasing_area_end=0.5))
    assert aug.max_erasing_area(0.0) == pytest.approx(0.1)
    assert aug.max_erasing_area(0.5) == pytest.approx(0.3)
    assert aug.max_erasing_area(1.0) == pytest.approx(0.5)
    assert aug.max_erasing_area(2.0) == pytest.approx(0.5)


def test_erased_area_grows_with_training_progress():
    aug = BatchAugment(AugmentConfig(flip=False, pad=0, color_jitter=0, erasing_prob=1.0,
                                     erasing_area_start=0.02, erasing_area_end=0.5))
    x = torch.zeros(400, 3, 32, 16)
    early = (aug(x, 0.0, torch.Generator().manual_seed(0)) != 0).float().mean()
    late = (aug(x, 1.0, torch.Generator().manual_seed(0)) != 0).float().mean()
    assert early < 0.03 and late > 0.15


def test_resize_pad_keeps_aspect_and_centres():
    img = Image.new("RGB", (10, 10), (255, 0, 0))
    out = resize_image(img, (40, 20), mode="pad")
    assert out.shape == (40, 20, 3)
    red_rows = np.nonzero((out[:, :, 0] == 255).all(axis=1))[0]
    assert red_rows.min() == 10 and red_rows.max() == 29  # 20x20 square centred vertically
    with pytest.raises(ConfigError, match="resize mode"):
        resize_image(img, (40, 20), mode="crop")


def test_pk_sampler_batches_have_p_ids_times_k_images():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    sampler = PKSampler(labels, p=4, k=3, seed=0)
    batches = list(sampler.batches(epoch=0))
    assert len(batches) == 2 == len(sampler)
    seen = []
    for b in batches:
        ids = labels[b].reshape(4, 3)
        assert (ids == ids[:, :1]).all() and len(set(ids[:, 0])) == 4
        seen.extend(ids[:, 0])
    assert len(set(seen)) == 8  # no identity twice in one epoch
    again = list(PKSampler(labels, p=4, k=3, seed=0).batches(epoch=0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = list(sampler.batches(epoch=1))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))


def test_pk_sampler_rejects_too_few_identities():
    with pytest.raises(ConfigError, match="P=4"):
        PKSampler([0, 0, 1, 1], p=4, k=2)


@dataclass
class _Inner:
    lr: float = 0.1
    milestones: list[int] = field(default_factory=lambda: [1])


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    name: str = "x"
    flag: bool = False


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: 0.5\nname: y\n")
    cfg = load_config(_Outer, path, ["inner.milestones=[3,4]", "flag=true"])
    assert cfg.inner.lr == 0.5 and cfg.inner.milestones == [3, 4] and cfg.name == "y" and cfg.flag is True
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(_Outer, None, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match="expected float"):
        load_config(_Outer, None, ["inner.lr=abc"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(_Outer, tmp_path / "missing.yaml")
