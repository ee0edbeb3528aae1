"""What `reidkit train` and `reidkit extract` do, as plain functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ..config import load_config
from ..data import load_dataset
from ..data.records import split_arrays
from ..data.store import load_image_tensor
from ..errors import ConfigError
from ..inference.extractor import Extractor
from ..training.config import TrainConfig
from ..utils import atomic_path

PAIR_MODELS = ("idla", "idla_ncc", "mls")  # routed to the pair trainer


def _model_name(config: Path | None) -> str:
    if config is None:
        return "embedding"
    try:
        data = yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {config}: cannot be read ({exc})") from None
    return str((data.get("model") or {}).get("name", "embedding"))


def run_train(config: Path | None, overrides: list[str], data: Path | None, out: Path, resume: bool = False,
              no_val: bool = False, show_progress: bool = True) -> dict:
    overrides = list(overrides) + (["data.validation=none"] if no_val else [])
    if _model_name(config) in PAIR_MODELS:
        from ..training.pair import train_pair_model_from_cli

        return train_pair_model_from_cli(config, overrides, data=data, out=out, resume=resume,
                                         show_progress=show_progress)
    from ..training.embedding import train_embedding

    cfg = load_config(TrainConfig, config, overrides)
    result = train_embedding(cfg, out, data_root=data, resume=resume, show_progress=show_progress)
    best = result["best"]
    if best:
        print(f"best validation (epoch {best['epoch']}): rank-1 {best['rank1']:.1f}  mAP {best['mAP']:.1f}  "
              f"mINP {best['mINP']:.1f}")
    print(f"checkpoints and logs in {out}")
    return result


def run_extract(checkpoint: Path, data: Path, out: Path, device: str = "auto", flip: bool = False,
                show_progress: bool = True) -> None:
    """Embed every split of a dataset; the .npz also works as `reidkit evaluate --features` input.

    A model with the AlignedReID local branch also writes `{split}_local` (N, stripes, local_dim) arrays, which
    `reidkit evaluate --features X --local-weight W` uses.
    """
    dataset = load_dataset(data)
    ext = Extractor(checkpoint, device=device, flip=flip)
    arrays: dict[str, np.ndarray] = {}
    splits = [("query", "q", dataset.query), ("gallery", "g", dataset.gallery), ("train", "t", dataset.train)]
    for split, key, records in splits:
        if not records:
            continue
        paths, pids, camids = split_arrays(records)
        images = load_image_tensor(paths, ext.input_size, ext.resize, show_progress, desc=f"loading {split}")
        if ext.has_local:
            arrays[f"{split}_features"], arrays[f"{split}_local"] = ext.embed_uint8(images, show_progress, local=True)
        else:
            arrays[f"{split}_features"] = ext.embed_uint8(images, show_progress)
        arrays[f"{key}_pids"], arrays[f"{key}_camids"], arrays[f"{key}_paths"] = pids, camids, np.asarray(paths)
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    counts = ", ".join(f"{k.split('_')[0]} {len(v)}" for k, v in arrays.items() if k.endswith("_features"))
    local = f" + local features ({ext.model.local_dim} per stripe)" if ext.has_local else ""
    print(f"wrote {out}: {counts} embeddings of dim {ext.dim}{local}")
