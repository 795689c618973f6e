"""Moving member windows between ranks: to the scorers (all members of a sub-window) and to the writer."""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..parallel.split import split_sizes


def row_blocks(n_rows: int, parts: int) -> list[slice]:
    """Split ``n_rows`` rows into ``parts`` contiguous blocks (some may be empty when rows < parts)."""
    base, extra = divmod(n_rows, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(slice(start, start + size))
        start += size
    return out


def members_for_rows(comm, local: np.ndarray, counts: list[int]) -> tuple[np.ndarray, slice]:
    """All-to-all over the ensemble axis: every rank gets ALL members for one block of its window's rows.

    ``local`` is (m_local, C, r, c) on each ensemble rank (same window, different members);
    ``counts[g]`` is the member count of group g. Returns (M, C, r_block, c) and the block's row slice.
    """
    size, rank = comm.size, comm.rank
    m, C, r, c = local.shape
    blocks = row_blocks(r, size)
    if size == 1:
        return np.ascontiguousarray(local), blocks[0]
    send = np.concatenate([local[:, :, b].reshape(-1) for b in blocks]).astype(np.float32, copy=False)
    send_counts = [m * C * (b.stop - b.start) * c for b in blocks]
    mine = blocks[rank]
    rows_mine = mine.stop - mine.start
    recv_counts = [counts[g] * C * rows_mine * c for g in range(size)]
    recv = np.empty(sum(recv_counts), dtype=np.float32)
    comm.Alltoallv([send, send_counts, MPI.FLOAT], [recv, recv_counts, MPI.FLOAT])
    out = recv.reshape(sum(counts), C, rows_mine, c) if rows_mine else np.empty((sum(counts), C, 0, c), np.float32)
    return out, mine


def gather_windows(comm, data: np.ndarray | None, window: tuple[slice, slice] | None, full_shape: tuple[int, ...],
                   root: int = 0) -> np.ndarray | None:
    """Assemble (..., rows, cols) windows sent by the ranks of ``comm`` into the full field on ``root``.

    Ranks that hold a duplicate of another rank's window pass ``data=None``.
    """
    item = None if data is None else (window[0].start, window[0].stop, window[1].start, window[1].stop,
                                      np.ascontiguousarray(data, dtype=np.float32))
    parts = comm.gather(item, root=root)
    if comm.rank != root:
        return None
    full = np.full(full_shape, np.nan, dtype=np.float32)
    for p in parts:
        if p is not None:
            r0, r1, c0, c1, arr = p
            full[..., r0:r1, c0:c1] = arr
    return full


__all__ = ["row_blocks", "members_for_rows", "gather_windows", "split_sizes"]
