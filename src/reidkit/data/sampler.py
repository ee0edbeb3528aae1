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

    Distributed (`world_size` > 1): P is the GLOBAL batch's identities; every rank draws the same global batch
    and keeps its own P / world_size identities (rank-major slices, no identity on two ranks), so the ranks'
    batches joined in rank order are exactly the one-process batch, and the epoch has the same number of steps
    on any number of processes.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if p < 2 or k < 1:
            raise ConfigError(f"P x K sampler: need P >= 2 identities and K >= 1 images per batch, got {p} x {k}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"P x K sampler: rank {rank} of world size {world_size} is not a valid rank")
        if p % world_size:
            raise ConfigError(f"P x K sampler: optim.p={p} identities per global batch do not split evenly over "
                              f"{world_size} processes (choose optim.p as a multiple of {world_size}, or another "
                              "number of processes)")
        by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_label[int(label)].append(index)
        if len(by_label) < p:
            raise ConfigError(f"P x K sampler: P={p} identities per batch but the training set has {len(by_label)}")
        self.by_label = {label: np.asarray(idx) for label, idx in sorted(by_label.items())}
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.by_label) // self.p

    @property
    def local_batch_size(self) -> int:
        return self.p // self.world_size * self.k

    def global_batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The whole batches (all ranks' items, rank-major), as one process draws them."""
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

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """This rank's share of each global batch (the whole batch in one process)."""
        n = self.local_batch_size
        for batch in self.global_batches(epoch):
            yield batch[self.rank * n:(self.rank + 1) * n]
