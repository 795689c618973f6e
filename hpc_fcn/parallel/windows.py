"""Assembling a field from the windows its ranks hold: the gather that feeds a single writer."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def window_bounds(s: slice | None, n: int, what: str) -> tuple[int, int]:
    """[start, stop) of a contiguous, non-empty window of an axis of size n."""
    if s is None:
        return 0, n
    if not isinstance(s, slice):
        raise TypeError(f"{what} must be a slice, got {type(s).__name__}")
    start, stop, step = s.indices(n)
    if step != 1:
        raise ValueError(f"{what} must be a contiguous slice (step 1), got {s}")
    if stop <= start:
        raise ValueError(f"{what} window {s} is empty for an axis of size {n}")
    return start, stop


def gather_window_to_root(comm, data, full_shape: Sequence[int], *, rows: slice | None = None,
                          cols: slice | None = None, members: slice | None = None, root: int = 0):
    """Assemble the windows held by the ranks of ``comm`` into one float32 array on ``root`` (None elsewhere).

    Collective over ``comm`` (a :class:`hpc_fcn.parallel.comm.Communicator`). ``data`` covers ``rows`` x
    ``cols`` of the last two axes of ``full_shape`` and, when given, ``members`` of its first axis; a rank
    holding a copy of data that another rank sends passes ``data=None``. The windows must tile
    ``full_shape`` exactly (checked; every rank raises alike).
    """
    full_shape = tuple(int(n) for n in full_shape)
    if len(full_shape) < 2:
        raise ValueError(f"full_shape must have at least two axes (rows, cols), got {full_shape}")
    meta = None
    if data is not None:
        data = np.ascontiguousarray(data, dtype=np.float32)
        box = [(0, n) for n in full_shape]
        box[-2] = window_bounds(rows, full_shape[-2], "rows")
        box[-1] = window_bounds(cols, full_shape[-1], "cols")
        if members is not None:
            if len(full_shape) < 3:
                raise ValueError("members= needs a full_shape with a leading members axis")
            box[0] = window_bounds(members, full_shape[0], "members")
        want = tuple(b - a for a, b in box)
        if data.shape != want:
            raise ValueError(f"rank {comm.rank}: data of shape {data.shape} does not fit its window {want}")
        meta = tuple(box)
    metas = comm.gather(meta, root=root, tag="write")
    error = _check_tiling(metas, full_shape) if comm.rank == root else None
    error = comm.bcast(error, root=root, tag="write")
    if error:
        raise ValueError(f"gather_window_to_root: {error}")
    pieces = comm.gatherv_to_root(data if data is not None else np.empty(0, np.float32), root=root, tag="write")
    if pieces is None:
        return None
    out = np.empty(full_shape, np.float32)
    for m, piece in zip(metas, pieces):
        if m is not None:
            out[tuple(slice(a, b) for a, b in m)] = piece
    return out


def _check_tiling(metas: list, full_shape: tuple[int, ...]) -> str | None:
    """None when the boxes are disjoint and cover the full shape, else the reason."""
    boxes = [(r, m) for r, m in enumerate(metas) if m is not None]
    for i, (ri, a) in enumerate(boxes):
        for rj, b in boxes[i + 1:]:
            if all(lo1 < hi2 and lo2 < hi1 for (lo1, hi1), (lo2, hi2) in zip(a, b)):
                return f"the windows of ranks {ri} and {rj} overlap"
    covered = sum(int(np.prod([hi - lo for lo, hi in m])) for _, m in boxes)
    total = int(np.prod(full_shape))
    if covered != total:
        return f"the windows cover {covered} of the {total} points of {full_shape}"
    return None
