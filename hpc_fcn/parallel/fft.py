"""Distributed ``rfft2``/``irfft2`` (norm="ortho") of a channels-last token grid split over h x w.

Pencil scheme for a (B, h_local, w_local, C) field of global size H x W on ph x pw ranks:

1. all-to-all over ``w``: columns become whole, this rank's rows are split again over the pw ranks;
2. ``rfft`` along the columns -> Wf = W // 2 + 1 modes;
3. all-to-all over ``spatial`` (h x w): rows become whole, the Wf mode columns are split over ph*pw;
4. ``fft`` along the rows.

Spectral layout: spatial rank ``s = h.rank * pw + w.rank`` holds every row frequency (all H) and
the mode columns ``[c0, c1)`` of a balanced split of Wf over ph*pw, as (B, H, c1 - c0, C).
``irfft2`` runs the steps backwards. Each step is differentiable, so gradients are exact.
Steps 1 and 3 are skipped when their group has one rank (pure h split: one transpose).

``modes=K`` keeps only the mode columns ``[0, K)`` (what the AFNO filter acts on; the published window keeps
about half of them): they alone are transposed, transformed along the rows and split over the ph*pw ranks
(so every rank gets kept modes), and ``irfft2`` treats the dropped columns as zeros, as
:class:`hpc_fcn.accel.FusedAFNONet` does for the serial model.
"""
from __future__ import annotations

import torch

from .grid import ProcessGrid
from .primitives import transpose
from .split import shard_range, split_sizes


class DistributedFFT2:
    """Forward and inverse real 2-D FFT of an H x W token grid decomposed over ``grid.h`` x ``grid.w``."""

    def __init__(self, grid: ProcessGrid, H: int, W: int, tag: str = "fft", modes: int | None = None):
        self.grid = grid
        self.H, self.W, self.Wf = H, W, W // 2 + 1
        self.modes = self.Wf if modes is None else int(modes)  # mode columns kept: [0, modes)
        if not 1 <= self.modes <= self.Wf:
            raise ValueError(f"modes must be between 1 and W // 2 + 1 = {self.Wf}, got {modes}")
        self.tag = tag
        ph, pw = grid.h.size, grid.w.size
        self.row_sizes = split_sizes(H, ph, "token grid's rows")
        self.col_sizes = split_sizes(W, pw, "token grid's columns")
        self.rows = slice(*shard_range(H, ph, grid.h.rank, "token grid's rows"))
        self.cols = slice(*shard_range(W, pw, grid.w.rank, "token grid's columns"))
        h_local = self.row_sizes[grid.h.rank]
        # rows after step 1: this rank's rows split over w, listed in spatial-rank order
        self.sub_row_sizes = split_sizes(h_local, pw, f"{h_local} local token rows (over w)")
        self.pencil_row_sizes = [s for i in range(ph)
                                 for s in split_sizes(self.row_sizes[i], pw, "local token rows (over w)")]
        self.mode_col_sizes = split_sizes(self.modes, ph * pw, "rfft mode columns")
        self.mode_cols = slice(*shard_range(self.modes, ph * pw, grid.spatial.rank, "rfft mode columns"))
        self.mode_rows = slice(0, H)

    def spectral_shape(self, batch: int, channels: int) -> tuple[int, int, int, int]:
        """Shape of this rank's spectral shard."""
        return (batch, self.H, self.mode_cols.stop - self.mode_cols.start, channels)

    def rfft2(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h_local, w_local, C) real -> (B, H, local mode columns, C) complex."""
        g = self.grid
        x = transpose(x, g.w, gather_dim=2, scatter_dim=1, gather_sizes=self.col_sizes,
                      scatter_sizes=self.sub_row_sizes, tag=self.tag)
        X = torch.fft.rfft(x, dim=2, norm="ortho")
        if self.modes < self.Wf:
            X = X.narrow(2, 0, self.modes)  # the all-to-all packs its pieces, so no copy here
        X = transpose(X, g.spatial, gather_dim=1, scatter_dim=2, gather_sizes=self.pencil_row_sizes,
                      scatter_sizes=self.mode_col_sizes, tag=self.tag)
        return torch.fft.fft(X, dim=1, norm="ortho")

    def irfft2(self, X: torch.Tensor) -> torch.Tensor:
        """(B, H, local mode columns, C) complex -> (B, h_local, w_local, C) real."""
        g = self.grid
        x = torch.fft.ifft(X, dim=1, norm="ortho")
        x = transpose(x, g.spatial, gather_dim=2, scatter_dim=1, gather_sizes=self.mode_col_sizes,
                      scatter_sizes=self.pencil_row_sizes, tag=self.tag)
        x = torch.fft.irfft(x, n=self.W, dim=2, norm="ortho")  # zero-pads columns [modes, Wf)
        return transpose(x, g.w, gather_dim=1, scatter_dim=2, gather_sizes=self.sub_row_sizes,
                         scatter_sizes=self.col_sizes, tag=self.tag)

    def transpose_bytes(self, batch: int, channels: int, itemsize: int = 4) -> int:
        """Bytes this rank sends to other ranks in one ``rfft2`` (real itemsize; complex is twice)."""
        g = self.grid
        ph, pw = g.h.size, g.w.size
        h_local = self.row_sizes[g.h.rank]
        w_local = self.col_sizes[g.w.rank]
        total = 0
        if pw > 1:  # my rows x my columns, minus the piece that stays with me
            total += batch * channels * itemsize * w_local * (h_local - self.sub_row_sizes[g.w.rank])
        if ph * pw > 1:
            my_rows = self.sub_row_sizes[g.w.rank]
            my_modes = self.mode_col_sizes[g.spatial.rank]
            total += batch * channels * 2 * itemsize * my_rows * (self.modes - my_modes)
        return total
