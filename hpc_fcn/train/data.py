"""Reading a rank's window of training samples: (batch, steps+1, C, rows, cols) in normalised units."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..data.era5 import FCNDataset


class WindowReader:
    """Reads only this rank's rows and columns of each sample and the steps that follow it."""

    def __init__(self, dataset: FCNDataset, rows: slice, cols: slice, device: torch.device | str = "cpu"):
        self.dataset, self.rows, self.cols = dataset, rows, cols
        self.device = torch.device(device)

    def sequences(self, starts: Sequence[int], steps: int) -> torch.Tensor:
        """Samples ``start .. start+steps`` for each start: (len(starts), steps+1, C, r, c) float32."""
        arr = np.stack([self.dataset.read_sequence(int(i), steps + 1, self.rows, self.cols, normalise=True)
                        for i in starts])
        out = torch.from_numpy(arr)
        return out.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else out

    def climatology(self) -> torch.Tensor:
        """The climatology of the window in normalised units (C, r, c), for ACC anomalies."""
        clim = self.dataset.normalise(self.dataset.climatology(self.rows, self.cols))
        return torch.from_numpy(np.ascontiguousarray(clim)).to(self.device)
