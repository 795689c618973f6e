"""Which samples each rank trains on: one seeded permutation per epoch, cut into global batches.

The order depends only on (seed, phase, epoch), never on the layout: data-parallel rank ``r`` of ``n``
takes the ``r``-th balanced contiguous slice of each global batch, so the union over ranks of batch
``b`` is the same set of samples as a serial run's batch ``b``.
"""
from __future__ import annotations

import numpy as np

from ..parallel.split import shard_range


def usable_starts(times: np.ndarray, steps: int) -> np.ndarray:
    """Sample indices ``i`` whose ``i .. i+steps`` are consecutive equally spaced times (no missing years)."""
    n = len(times) - steps
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    dt = times[1] - times[0] if len(times) > 1 else None
    ok = (times[steps:] - times[:n]) == dt * steps
    return np.nonzero(ok)[0].astype(np.int64)


def spread_starts(times: np.ndarray, max_lead: int, samples: int, what: str = "the split") -> np.ndarray:
    """``samples`` initial indices with ``max_lead`` steps after them, evenly spread over the split."""
    starts = usable_starts(times, max_lead)
    if len(starts) == 0:
        raise ValueError(f"{what} has {len(times)} samples: too few for a {max_lead}-step lead")
    pick = np.unique(np.round(np.linspace(0, len(starts) - 1, min(samples, len(starts)))).astype(int))
    return starts[pick]


class EpochSampler:
    """Global batches of one phase's epochs, and this data-parallel rank's share of each."""

    def __init__(self, starts: np.ndarray, batch_size: int, samples_per_epoch: int | None, seed: int,
                 phase: int, data_rank: int = 0, data_size: int = 1):
        if batch_size < data_size:
            raise ValueError(f"batch_size {batch_size} is smaller than the {data_size} data-parallel ranks: "
                             f"every rank needs at least one sample per step")
        self.starts = np.asarray(starts, dtype=np.int64)
        per_epoch = len(self.starts) if samples_per_epoch is None else min(samples_per_epoch, len(self.starts))
        self.batch_size = batch_size
        self.steps_per_epoch = per_epoch // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(self.starts)} usable training samples cannot fill one batch of {batch_size}")
        self.seed, self.phase = seed, phase
        self.lo, self.hi = shard_range(batch_size, data_size, data_rank, "batch")

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's samples, in training order (the same on every rank and layout)."""
        rng = np.random.default_rng([self.seed, self.phase, epoch])
        return self.starts[rng.permutation(len(self.starts))[: self.steps_per_epoch * self.batch_size]]

    def local_batches(self, epoch: int, first_step: int = 0):
        """Yield (step, this rank's sample indices) from ``first_step`` to the end of the epoch."""
        order = self.order(epoch)
        for step in range(first_step, self.steps_per_epoch):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield step, batch[self.lo:self.hi]
