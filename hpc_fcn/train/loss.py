"""Latitude-weighted MSE in normalised units, computed on a rank's window as its share of the global mean.

Each rank sums ``w_lat * w_chan * (pred - target)^2`` over its own rows and columns and divides by the
element count of the whole field, so the sum of the ranks' partial losses (over h, w and the data axis)
is the loss of the whole batch, and backpropagating each partial gives the right gradient after the
gradients are summed.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch


def latitude_weights(lat: np.ndarray, mode: str) -> np.ndarray:
    """Per-row weights with mean 1 (``none``: all ones); delegates to :mod:`hpc_fcn.metrics`."""
    if mode == "none":
        return np.ones(len(lat), dtype=np.float64)
    from ..metrics import lat_weights
    return np.asarray(lat_weights(np.asarray(lat, dtype=np.float64), mode), dtype=np.float64)


def channel_weights(channels: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    """Weights per channel (missing ones weigh 1), normalised to mean 1; unknown names are an error."""
    unknown = sorted(set(weights) - set(channels))
    if unknown:
        raise ValueError(f"loss.channel_weights names unknown channel(s) {', '.join(unknown)}; "
                         f"the model's channels are {', '.join(channels)}")
    w = np.array([float(weights.get(c, 1.0)) for c in channels], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("loss.channel_weights are all zero: no channel would be trained")
    return w / w.mean()


def window_weights(lat_w: np.ndarray, chan_w: np.ndarray, rows: slice, cols: slice, nlon: int) -> torch.Tensor:
    """Channel x latitude weights (C, r, c) of a window of a field with ``nlon`` columns (fp32)."""
    w = np.asarray(chan_w)[:, None, None] * np.asarray(lat_w)[rows][None, :, None]
    ncols = len(range(*cols.indices(int(nlon))))
    return torch.as_tensor(np.broadcast_to(w, (w.shape[0], w.shape[1], ncols)).copy(), dtype=torch.float32)


class WeightedMSE:
    """The partial loss of one window: sum of weighted squared errors over the field's total size."""

    def __init__(self, lat_w: np.ndarray, chan_w: np.ndarray, rows: slice, cols: slice, nlon: int):
        self.nlat, self.nlon = len(lat_w), int(nlon)
        self.nchan = len(chan_w)
        self.weight = window_weights(lat_w, chan_w, rows, cols, self.nlon)

    def to(self, device) -> "WeightedMSE":
        self.weight = self.weight.to(device)
        return self

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of each sample's share of its weighted mean squared error (fp32)."""
        if pred.shape != target.shape or tuple(pred.shape[-3:]) != tuple(self.weight.shape):
            raise ValueError(f"prediction {tuple(pred.shape)} / target {tuple(target.shape)} do not match the "
                             f"window {tuple(self.weight.shape)}")
        err = self.error(pred.float() - target.float())
        return (err * self.weight).sum() / (self.nchan * self.nlat * self.nlon)

    @staticmethod
    def error(diff: torch.Tensor) -> torch.Tensor:
        return diff ** 2


class WeightedMAE(WeightedMSE):
    """The same partial loss with absolute errors: the CRPS of a one-member ensemble (the control's, beside the
    members' fair CRPS, in the same units and weights)."""

    @staticmethod
    def error(diff: torch.Tensor) -> torch.Tensor:
        return diff.abs()
