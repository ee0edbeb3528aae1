"""P x K identity sampling: each batch holds P identities with K images each (needed for batch-hard mining)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import ConfigError


class PKSampler:
    """Yields index batches of P identities x K images.

    One epoch visits every identity once (len(ids) // P batches). Identities with fewer than K images are
    sampled with replacement. Deterministic given (seed, epoch), so a resumed run draws the same batches.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0):
        if p < 2 or k < 1:
            raise ConfigError(f"P x K sampler: need P >= 2 identities and K >= 1 images per batch, got {p} x {k}")
        by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_label[int(label)].append(index)
        if len(by_label) < p:
            raise ConfigError(f"P x K sampler: P={p} identities per batch but the training set has {len(by_label)}")
        self.by_label = {label: np.asarray(idx) for label, idx in sorted(by_label.items())}
        self.p, self.k, self.seed = p, k, seed

    def __len__(self) -> int:
        return len(self.by_label) // self.p

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        labels = np.array(list(self.by_label))
        order = rng.permutation(labels)
        for b in range(len(self)):
            chosen = order[b * self.p:(b + 1) * self.p]
            parts = []
            for label in chosen:
                pool = self.by_label[int(label)]
                parts.append(rng.choice(pool, size=self.k, replace=len(pool) < self.k))
            yield np.concatenate(parts)
