"""The one balanced split of ``n`` items over ``k`` parts: the first ``n % k`` parts get one more.

Every decomposition uses it: the communicators' default shards, the grid's token windows, the
distributed FFT, the ensemble members of each group, the scorers' row blocks and the IO windows.
``split_sizes`` refuses empty parts (a rank with nothing to hold is a layout error); ``blocks``
allows them (a scorer may get no rows of a small window).
"""
from __future__ import annotations

from itertools import accumulate
from typing import Sequence


def _balanced(n: int, k: int) -> list[int]:
    base, extra = divmod(n, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def split_sizes(n: int, k: int, what: str = "dimension") -> list[int]:
    """Sizes of the ``k`` parts of ``n``; raises ValueError when a part would be empty."""
    if k < 1:
        raise ValueError(f"cannot split a {what} over {k} ranks")
    if n < k:
        raise ValueError(f"cannot split a {what} of size {n} over {k} ranks: a rank would get nothing "
                         f"(use at most {n} ranks on this axis)")
    return _balanced(n, k)


def offsets(sizes: Sequence[int]) -> list[int]:
    """Start of each part given the part sizes (exclusive prefix sum)."""
    return [0, *accumulate(sizes)][:len(sizes)]


def split_offsets(n: int, k: int, what: str = "dimension") -> list[int]:
    """Start of each of the ``k`` parts of ``n``."""
    return offsets(split_sizes(n, k, what))


def shard_range(n: int, k: int, i: int, what: str = "dimension") -> tuple[int, int]:
    """[start, stop) of part ``i`` of ``n`` split over ``k``."""
    sizes = split_sizes(n, k, what)
    start = sum(sizes[:i])
    return start, start + sizes[i]


def blocks(n: int, k: int) -> list[slice]:
    """The ``k`` parts of ``range(n)`` as slices; parts are empty when ``n < k``."""
    if k < 1:
        raise ValueError(f"cannot split {n} items into {k} parts")
    sizes = _balanced(n, k)
    return [slice(o, o + s) for o, s in zip(offsets(sizes), sizes)]
