"""`descriptor_dim` (and so `Extractor.dim`, which sizes empty results and gallery indexes) is the width a model
really returns in eval mode, for every model an image extractor loads. PL-Net (global + parts) and ACRN (ReID +
attributes) once reported their global width only, so a video run with nobody in a frame produced (0, 1280)
features beside (n, 2816) ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidkit.checkpoint import save_checkpoint
from reidkit.inference.extractor import IMAGE_EMBEDDING_TASKS
from reidkit.models import build_model
from reidkit.models.registry import list_models, model_spec

SMALL = {"backbone": "simple_cnn", "input_size": (64, 32)}
EXTRA = {"acrn": {"num_attributes": 5}, "plnet": {"parts": 3, "part_dim": 8},
         "temporal": {"temporal_pooling": "avg"}}
IMAGE_MODELS = [n for n in list_models() if model_spec(n).task in IMAGE_EMBEDDING_TASKS]


def _model(name: str) -> torch.nn.Module:
    model = build_model(name, **SMALL, **EXTRA.get(name, {})).eval()
    if name == "plnet":
        with torch.no_grad():
            model.fit_parts(model.backbone(torch.randn(4, 3, 64, 32)))
    return model


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_descriptor_dim_is_the_eval_output_width(name):
    model = _model(name)
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([[0, 0, 32, 64]] * model.num_boxes, dtype=torch.float32).expand(3, -1, -1)) \
            if hasattr(model, "num_boxes") else model(x)
    assert out.shape == (3, model.descriptor_dim)


def test_extractor_dim_of_a_plnet_checkpoint_matches_its_features(tmp_path):
    from reidkit.inference import Extractor

    cfg = {**SMALL, **EXTRA["plnet"]}
    save_checkpoint(tmp_path / "plnet.pt", model=_model("plnet"), model_name="plnet", model_cfg=cfg, epoch=1)
    ext = Extractor(tmp_path / "plnet.pt")
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, 3, 64, 32), np.uint8))
    global_dim = build_model("embedding", **SMALL).embedding_dim
    assert ext.embed_uint8(images).shape == (2, global_dim + 3 * 8)  # global + parts x part_dim
    assert ext.embed([]).shape == (0, global_dim + 3 * 8)
