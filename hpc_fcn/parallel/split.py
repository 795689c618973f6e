"""Balanced split shapes: the first ``n % k`` shards get one extra element; empty shards are an error."""
from __future__ import annotations


def split_sizes(n: int, k: int, what: str = "dimension") -> list[int]:
    if k < 1:
        raise ValueError(f"cannot split a {what} over {k} ranks")
    if n < k:
        raise ValueError(f"cannot split a {what} of size {n} over {k} ranks: a rank would get nothing "
                         f"(use at most {n} ranks on this axis)")
    base, extra = divmod(n, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def split_offsets(n: int, k: int, what: str = "dimension") -> list[int]:
    sizes = split_sizes(n, k, what)
    offs = [0]
    for s in sizes[:-1]:
        offs.append(offs[-1] + s)
    return offs


def shard_range(n: int, k: int, i: int, what: str = "dimension") -> tuple[int, int]:
    """[start, stop) of shard ``i`` of ``n`` split over ``k``."""
    sizes = split_sizes(n, k, what)
    start = sum(sizes[:i])
    return start, start + sizes[i]
