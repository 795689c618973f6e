"""Moving member windows between ranks: each scorer gets all members of a block of its window."""
from __future__ import annotations

import numpy as np

from ..parallel.split import blocks


def row_blocks(rows: int, size: int) -> list[slice]:
    """The blocks a window of ``rows`` rows is split into over an ensemble axis of ``size`` ranks: rank i scores
    (and computes the probability products of) block i."""
    return blocks(rows, size)


def members_for_rows(comm, local: np.ndarray, counts: list[int]) -> tuple[np.ndarray, slice]:
    """All-to-all over the ensemble axis (``comm``, a Communicator): every rank gets ALL members for one
    block of its window's rows (the balanced split of the rows; a block may be empty).

    ``local`` is (m_local, C, r, c) on each ensemble rank (same window, different members);
    ``counts[g]`` is the member count of group g. Returns (M, C, r_block, c) and the block's row slice.
    """
    size, rank = comm.size, comm.rank
    m, C, r, c = local.shape
    parts = row_blocks(r, size)
    if size == 1:
        return np.ascontiguousarray(local), parts[0]
    send = np.concatenate([local[:, :, b].reshape(-1) for b in parts]).astype(np.float32, copy=False)
    send_counts = [m * C * (b.stop - b.start) * c for b in parts]
    mine = parts[rank]
    rows_mine = mine.stop - mine.start
    recv_counts = [counts[g] * C * rows_mine * c for g in range(size)]
    recv = comm.alltoallv(send, send_counts, recv_counts, tag="score_members")
    out = recv.reshape(sum(counts), C, rows_mine, c) if rows_mine else np.empty((sum(counts), C, 0, c), np.float32)
    return out, mine


__all__ = ["members_for_rows", "row_blocks"]
