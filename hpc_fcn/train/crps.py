"""Fair CRPS of an ensemble whose members are split over the ensemble axis: the CRPS training loss.

fair CRPS = mean_m |x_m - y| - 1 / (2 M (M - 1)) sum_{m,m'} |x_m - x_m'| at each point. Members are
split over ``grid.ensemble`` (balanced, :func:`hpc_fcn.parallel.split_sizes`), each rank holding a
window of its members. The cross-member term needs all members: they are all-gathered over the ensemble
axis with :func:`hpc_fcn.parallel.gather_to`, whose backward is the adjoint reduce-scatter (every rank's
gradient with respect to the gathered members, summed and returned to each member's owner). Each rank
returns its own members' share at its own points, weighted like :class:`hpc_fcn.train.loss.WeightedMSE`,
so the shares add up over the ensemble and spatial ranks to the loss of the whole ensemble
(docs/ensembles.md).

The spectral term (``loss.spectral_weight``) is the same fair CRPS of the members' zonal Fourier
coefficients, row by row: a proper score for every wavenumber, so members whose spread sits at the wrong
scales pay for it even when their point-wise spread is right. Rows split over the ``w`` axis are made
whole first (all-gather over ``w``; backward: reduce-scatter).

The zonal-mean term (``loss.zonal_weight``) is the fair CRPS of each row's mean (the wavenumber-0 coefficient,
scaled like the others), counted once per row instead of once per point: the zonal-mean flow (the jets) holds
little of the point-wise variance, so the point-wise CRPS hardly sees a model that drifts in it, yet that
drift is error at every point of the row after a few days.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..parallel.comm import Communicator
from ..parallel.primitives import gather_to
from ..parallel.split import offsets, split_sizes
from .loss import window_weights

TAG = "crps_members"
SPECTRAL_TAG = "crps_spectral"
ZONAL_TAG = "crps_zonal"


def member_sizes(n_members: int, axis: Communicator) -> list[int]:
    """Members per rank of the ensemble axis (balanced split; every rank needs at least one)."""
    if n_members < 1:
        raise ValueError(f"the CRPS loss needs at least one member, got {n_members}")
    return split_sizes(n_members, axis.size, "member ensemble")


def fair_crps_share(members: torch.Tensor, target: torch.Tensor, axis: Communicator,
                    sizes: list[int], tag: str = TAG) -> torch.Tensor:
    """This rank's members' share of the fair CRPS at each point (shape of ``target``).

    ``members``: (sizes[axis.rank], *target.shape), this rank's members; ``sizes``: members per rank.
    Summed over the ranks of ``axis`` it is the fair CRPS of all sum(sizes) members. Collective over
    ``axis`` (forward and backward). Computed in fp32 (fp64 input stays fp64).
    """
    own, M = sizes[axis.rank], sum(sizes)
    if members.shape[0] != own or tuple(members.shape[1:]) != tuple(target.shape):
        raise ValueError(f"rank {axis.rank} of the ensemble axis must hold {own} of the {M} members, each "
                         f"shaped like the target {tuple(target.shape)}; got members {tuple(members.shape)}")
    dtype = torch.float64 if members.dtype == torch.float64 else torch.float32
    x, y = members.to(dtype), target.to(dtype)
    skill = (x - y).abs().sum(dim=0) / M
    if M == 1:
        return skill  # the spread term vanishes (as in hpc_fcn.metrics.crps_fair)
    everyone = gather_to(x, axis, 0, sizes, tag=tag)
    # e_m = sum_m' |x_m - x_m'|: at sorted position k (1-based), (2k - M) x_(k) - 2 S_k + S_M, S = cumsum
    srt, order = torch.sort(everyone, dim=0)
    cum = torch.cumsum(srt, dim=0)
    k = torch.arange(1, M + 1, dtype=dtype, device=x.device).reshape((M,) + (1,) * y.dim())
    e_sorted = (2 * k - M) * srt - 2 * cum + cum[-1:]
    e = torch.zeros_like(e_sorted).scatter(0, order, e_sorted)  # back to member order
    mine = e.narrow(0, offsets(sizes)[axis.rank], own)
    return skill - mine.sum(dim=0) / (2.0 * M * (M - 1))


def zonal_coefficients(x: torch.Tensor) -> torch.Tensor:
    """Real and imaginary parts (..., nlon // 2 + 1, 2) of each row's Fourier series along the last dimension,
    scaled so that their squares sum to the row's (Parseval, every real coefficient counted once): white noise
    of variance s^2 gives every non-zero coefficient variance s^2, and its CRPS equals the point-wise one."""
    n = x.shape[-1]
    c = torch.view_as_real(torch.fft.rfft(x, dim=-1, norm="ortho"))
    k = torch.arange(c.shape[-2], device=x.device)
    scale = torch.ones(c.shape[-2], dtype=c.dtype, device=x.device)
    scale[(k > 0) & (2 * k != n)] = math.sqrt(2.0)  # the coefficients rfft holds once for a conjugate pair
    return c * scale[:, None]


class EnsembleCRPS:
    """The partial fair-CRPS loss of one window and one rank's members, latitude and channel weighted.

    Sum over the batch of each sample's share of its weighted mean fair CRPS, divided by the global
    element count (channels x rows x columns), as :class:`hpc_fcn.train.loss.WeightedMSE` does for the
    MSE. Adding the results over the ensemble and spatial (h x w) ranks gives the loss of the whole
    ensemble; sum (do not average) parameter gradients over the ensemble axis.
    """

    def __init__(self, lat_w: np.ndarray, chan_w: np.ndarray, rows: slice, cols: slice, nlon: int,
                 ensemble: Communicator, n_members: int, columns: Communicator | None = None,
                 col_sizes: Sequence[int] | None = None):
        """``columns``/``col_sizes``: the axis that splits the rows and each of its ranks' column count (for the
        row-wise spectral and zonal-mean terms; None when this rank holds whole rows)."""
        self.axis = ensemble
        self.sizes = member_sizes(n_members, ensemble)
        self.n_members = n_members
        self.count = len(chan_w) * len(lat_w) * int(nlon)
        self.weight = window_weights(lat_w, chan_w, rows, cols, nlon)
        self.columns = columns if columns is not None and columns.size > 1 else None
        self.col_sizes = list(col_sizes) if self.columns is not None else None
        if self.columns is not None and (self.col_sizes is None or sum(self.col_sizes) != int(nlon)):
            raise ValueError(f"the row-wise CRPS terms over a split row need each rank's column count (summing to "
                             f"{nlon}), got {col_sizes}")
        self.row_weight = self.weight[:, :, :1].clone()  # (C, r, 1): channel x latitude

    @property
    def local_members(self) -> int:
        return self.sizes[self.axis.rank]

    def to(self, device) -> "EnsembleCRPS":
        self.weight = self.weight.to(device)
        self.row_weight = self.row_weight.to(device)
        return self

    def _check(self, target: torch.Tensor) -> None:
        if tuple(target.shape[-3:]) != tuple(self.weight.shape):
            raise ValueError(f"target {tuple(target.shape)} does not end with the window {tuple(self.weight.shape)}")

    def __call__(self, members: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """members (m_local, *batch, C, r, c), target (*batch, C, r, c) -> this rank's partial loss."""
        self._check(target)
        crps = fair_crps_share(members, target, self.axis, self.sizes)
        return (crps * self.weight.to(crps.dtype)).sum() / self.count

    def _whole_rows(self, members: torch.Tensor, target: torch.Tensor, tag: str):
        """Members and target with whole rows (gathered over ``columns`` when split) in float32 or 64, and this
        rank's share of a row-wise score (1 / the columns' size: every rank of it scores the same rows)."""
        self._check(target)
        dtype = torch.float64 if members.dtype == torch.float64 else torch.float32
        x, y = members.to(dtype), target.to(dtype)
        if self.columns is None:
            return x, y, 1.0
        x = gather_to(x, self.columns, -1, self.col_sizes, tag=tag)
        y = gather_to(y, self.columns, -1, self.col_sizes, tag=tag)
        return x, y, 1.0 / self.columns.size

    def spectral(self, members: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """This rank's share of the weighted fair CRPS of the zonal Fourier coefficients (same normalisation
        as the point-wise loss: white noise scores the same in both). Collective over the ensemble axis and,
        when the rows are split, over ``columns``: every rank of it scores the whole rows and keeps 1/size."""
        x, y, share = self._whole_rows(members, target, SPECTRAL_TAG)
        crps = fair_crps_share(zonal_coefficients(x), zonal_coefficients(y), self.axis, self.sizes, tag=SPECTRAL_TAG)
        return share * (crps * self.row_weight.to(x.dtype)[..., None]).sum() / self.count

    def zonal(self, members: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """This rank's share of the weighted mean over channels and rows of the fair CRPS of each row's mean
        times sqrt(nlon) (the orthonormal wavenumber-0 coefficient: white noise scores as one point does)."""
        x, y, share = self._whole_rows(members, target, ZONAL_TAG)
        scale = 1.0 / math.sqrt(x.shape[-1])
        crps = fair_crps_share(x.sum(-1, keepdim=True) * scale, y.sum(-1, keepdim=True) * scale, self.axis,
                               self.sizes, tag=ZONAL_TAG)
        return share * (crps * self.row_weight.to(x.dtype)).sum() * x.shape[-1] / self.count
