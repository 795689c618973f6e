"""Moving member windows between ranks: each scorer gets all members of a block of its window."""
from __future__ import annotations

import numpy as np
from mpi4py import MPI



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


__all__ = ["row_blocks", "members_for_rows"]
