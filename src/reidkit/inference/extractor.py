"""Feature extraction with a trained checkpoint: `Extractor(checkpoint).embed(images_or_paths)`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import model_from_checkpoint
from ..data import load_dataset
from ..data.images import ImageLike, load_image_tensor
from ..data.keypoints import attach_pose_boxes
from ..data.records import split_arrays
from ..errors import ModelError, ReIDError
from ..utils import resolve_device
from .features import embed_tensor, embed_tensor_local, require_finite_features

# Tasks whose models embed one image at a time in eval mode (a tracklet model with its frame encoder; part and
# attribute models return their concatenated / fused descriptor).
IMAGE_EMBEDDING_TASKS = ("embedding", "tracklet", "parts", "plnet", "attributes")


class Extractor:
    """Embeds images with a reidkit checkpoint.

    >>> ext = Extractor("runs/x/best.pt")
    >>> feats = ext.embed(["a.jpg", "b.jpg"])        # (2, D) float32, L2-normalised
    >>> feats, local = ext.embed(paths, local=True)  # + (2, stripes, local_dim) AlignedReID local features
    >>> feats = ext.embed([pil_image, uint8_array])  # in-memory crops too (HxWx3 RGB; see data.images)
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = 128, flip: bool = False,
                 resize: str | None = None):
        if batch_size < 1:  # before loading: a zero-step batch loop would yield (0, 0) features
            raise ModelError(f"batch_size={batch_size}: must be >= 1")
        self.device = resolve_device(device)
        self.model, payload = model_from_checkpoint(checkpoint, map_location=self.device, task=IMAGE_EMBEDDING_TASKS)
        self.model.to(self.device).eval()
        attach_pose_boxes(self.model)  # a pose-guided part model (GLAD, SpindleNet) gets its boxes from keypoints
        self.checkpoint = Path(checkpoint)
        self.config = payload.get("config", {})
        self.input_size = tuple(self.model.input_size)
        self.resize = resize or self.config.get("data", {}).get("resize", "stretch")
        self.batch_size, self.flip = batch_size, flip
        self.mean, self.std = self.model.input_mean, self.model.input_std

    @property
    def dim(self) -> int:
        return int(self.model.descriptor_dim)

    @property
    def has_local(self) -> bool:
        """True when the checkpoint's model has the AlignedReID local branch."""
        return getattr(self.model, "local_branch", None) is not None

    def embed_uint8(self, images: torch.Tensor, show_progress: bool = False, local: bool = False,
                    desc: str = "embedding") -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """uint8 tensor (N,3,H,W) already at input size -> (N, D) float32; local=True: (global, local) with the
        AlignedReID local features (N, stripes, local_dim) as the second array. `desc` labels the progress bar."""
        kw = dict(mean=self.mean, std=self.std, device=self.device, batch_size=self.batch_size, flip=self.flip,
                  show_progress=show_progress, desc=desc)
        if not local:
            return require_finite_features(embed_tensor(self.model, images, **kw).numpy(), self._source)
        self._require_local()
        global_features, local_features = embed_tensor_local(self.model, images, **kw)
        return (require_finite_features(global_features.numpy(), self._source),
                require_finite_features(local_features.numpy(), f"{self._source} (local features)"))

    def embed(self, images: Sequence[ImageLike], show_progress: bool = False, local: bool = False
              ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        if len(images) == 0:
            empty = np.zeros((0, self.dim), dtype=np.float32)
            if not local:
                return empty
            self._require_local()
            return empty, np.zeros((0, 0, self.model.local_dim), dtype=np.float32)
        pixels = load_image_tensor(list(images), self.input_size, self.resize)
        return self.embed_uint8(pixels, show_progress, local=local)

    @property
    def _source(self) -> str:
        return f"model {self.checkpoint}"

    def _require_local(self) -> None:
        if not self.has_local:
            raise ModelError(f"checkpoint {self.checkpoint}: local=True needs a model with the AlignedReID local "
                             "branch (trained with model.local_dim > 0)")


def extract_split_features(checkpoint: str | Path, data_root: str | Path, device: str = "auto",
                           show_progress: bool = True, flip: bool = False, local: bool = False,
                           batch_size: int = 128) -> dict[str, np.ndarray]:
    """Query/gallery features of a dataset, in the layout `reidkit evaluate --features` reads.

    local=True adds the AlignedReID local features as `query_local` / `gallery_local`.
    """
    dataset = load_dataset(data_root)
    if not dataset.query or not dataset.gallery:
        raise ReIDError(f"{data_root}: needs query and gallery splits to evaluate")
    ext = Extractor(checkpoint, device=device, flip=flip, batch_size=batch_size)
    if local:
        ext._require_local()  # before the images are loaded
    out: dict[str, np.ndarray] = {}
    for split, records in (("query", dataset.query), ("gallery", dataset.gallery)):
        paths, pids, camids = split_arrays(records)
        images = load_image_tensor(paths, ext.input_size, ext.resize, show_progress, desc=f"decoding {split}")
        if local:
            out[f"{split}_features"], out[f"{split}_local"] = ext.embed_uint8(images, show_progress, local=True,
                                                                              desc=f"embedding {split}")
        else:
            out[f"{split}_features"] = ext.embed_uint8(images, show_progress, desc=f"embedding {split}")
        key = split[0]
        out[f"{key}_pids"], out[f"{key}_camids"], out[f"{key}_paths"] = pids, camids, np.asarray(paths)
    return out
