"""The re-ranker contract and its registry: one name -> one class with typed, validated parameters.

A re-ranker maps a query x gallery problem to (Q, G) distances (smaller = more similar). The same object serves
a full problem (`reidkit evaluate`: every gallery item) and a search's candidate pool (`reidkit search`, see
`rerank.candidates`), so the names and parameters are the same in evaluate, search and Python:

>>> from reidkit.rerank import build_reranker
>>> reranker = build_reranker("k_reciprocal", k1=20, k2=6, lambda_value=0.3)
>>> distmat = reranker(query_features, gallery_features)                       # (Q, G)
>>> fusion = build_reranker("pair", model="runs/idla/best.pt", top=20, weight=1.0)
>>> distmat = fusion(query_features, gallery_features, query_images=q_paths, gallery_images=g_paths)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError
from ..registry import Registry

# Paths of the images, or a uint8 (N, 3, H, W) tensor already at the pair network's input size.
Images = Sequence[str | Path] | np.ndarray | torch.Tensor


@dataclasses.dataclass(frozen=True)
class RerankInputs:
    """One re-ranking problem. `distances` is the first-stage (Q, G) distance (None: squared euclidean of the
    features); images are needed only by re-rankers with `needs_images` (pair fusion)."""

    query_features: np.ndarray | None
    gallery_features: np.ndarray | None
    distances: np.ndarray | None = None
    query_images: Images | None = None
    gallery_images: Images | None = None

    def first_stage(self) -> np.ndarray:
        if self.distances is not None:
            return np.asarray(self.distances)
        from ..distance import compute_distance_matrix

        return compute_distance_matrix(self.features("the first-stage distance")[0], self.gallery_features,
                                       "sqeuclidean")

    def features(self, why: str) -> tuple[np.ndarray, np.ndarray]:
        if self.query_features is None or self.gallery_features is None:
            raise ConfigError(f"{why} needs query and gallery features, but only a distance matrix was given")
        return self.query_features, self.gallery_features


class Reranker:
    """Base of the registered re-rankers (dataclasses whose fields are the parameters).

    Subclasses implement `rerank(inputs) -> (Q, G) distances`; `needs_features` / `needs_images` say what the
    inputs must hold, `min_gallery` how many gallery items (or pool candidates) the method needs at least.
    """

    name: ClassVar[str]
    needs_features: ClassVar[bool] = True
    needs_images: ClassVar[bool] = False

    @property
    def min_gallery(self) -> int:
        return 1

    def rerank(self, inputs: RerankInputs) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, query_features: np.ndarray | None, gallery_features: np.ndarray | None, *,
                 distances: np.ndarray | None = None, query_images: Images | None = None,
                 gallery_images: Images | None = None) -> np.ndarray:
        inputs = RerankInputs(query_features, gallery_features, distances, query_images, gallery_images)
        if self.needs_images and (query_images is None or gallery_images is None):
            raise ConfigError(f"re-ranker {self.name!r} needs the query and gallery images (paths or tensors)")
        if self.needs_features:
            inputs.features(f"re-ranker {self.name!r}")
        return np.asarray(self.rerank(inputs))

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters (for reports): the dataclass fields, objects by their type name."""
        def plain(value: Any) -> Any:
            return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        """Short name for tables and JSON (a chain joins its steps with '+')."""
        return self.name

    def describe(self) -> str:
        return f"{self.name} (" + ", ".join(f"{k}={v}" for k, v in self.params().items()) + ")"


RERANKERS: Registry[type[Reranker]] = Registry("re-ranker", ConfigError)


def register(name: str):
    """Class decorator: record a `Reranker` subclass under `name` (also its `.name`)."""
    def decorator(cls: type[Reranker]) -> type[Reranker]:
        cls.name = name
        return RERANKERS.register(name)(cls)

    return decorator


def build_reranker(name: str, **params: Any) -> Reranker:
    """The re-ranker registered as `name` with `params` (validated: ConfigError naming the bad one)."""
    from . import methods, pair  # noqa: F401  (registers the built-in re-rankers)

    cls = RERANKERS.get(name)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"re-ranker {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join(sorted(known))}")
    return cls(**params)


def reranker_names() -> list[str]:
    from . import methods, pair  # noqa: F401

    return RERANKERS.names()


@dataclasses.dataclass
class Chain(Reranker):
    """Re-rankers applied in turn, each on the previous one's distances (e.g. k_reciprocal, then pair fusion)."""

    steps: tuple[Reranker, ...]
    name: ClassVar[str] = "chain"

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError("a re-ranking chain needs at least one step")

    @property
    def min_gallery(self) -> int:
        return max(step.min_gallery for step in self.steps)

    @property
    def needs_images(self) -> bool:  # type: ignore[override]
        return any(step.needs_images for step in self.steps)

    def __call__(self, query_features, gallery_features, *, distances=None, query_images=None,
                 gallery_images=None) -> np.ndarray:
        for step in self.steps:
            distances = step(query_features, gallery_features, distances=distances, query_images=query_images,
                             gallery_images=gallery_images)
        return distances

    @property
    def label(self) -> str:
        return "+".join(step.label for step in self.steps)

    def describe(self) -> str:
        return " then ".join(step.describe() for step in self.steps)

    def params(self) -> dict[str, Any]:
        return {step.name: step.params() for step in self.steps}
