"""Validation scores after each epoch: RMSE (physical units) and ACC per variable at several leads.

Initial times are spread evenly over the validation split and dealt round-robin to the data-parallel
ranks; each rank rolls its windows forward and keeps latitude-weighted sums per (initial time, lead,
channel). One all-reduce combines them; scores are computed per initial time, then averaged.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..metrics import acc_from_sums
from .data import WindowReader
from .loss import latitude_weights
from .sampler import spread_starts

# per (initial time, lead, channel): sum w e^2, then metrics.acc_sums' three (sum w f'o', sum w f'^2,
# sum w o'^2), then sum w
_NSUMS = 5


class Validator:
    def __init__(self, reader: WindowReader, topo, leads, samples: int, lat_mode: str):
        ds = reader.dataset
        self.reader, self.topo = reader, topo
        self.leads = sorted(set(int(k) for k in leads))
        self.starts = spread_starts(ds.times, max(self.leads), samples, "the validation split")
        w = latitude_weights(ds.lat, lat_mode)[reader.rows]
        self.weight = torch.as_tensor(w, dtype=torch.float64, device=reader.device)[:, None]
        self.clim = reader.climatology().double()
        self.stds = np.asarray(ds.stds, dtype=np.float64)
        self.channels = list(ds.channels)

    def _sums(self, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """(B, C, 5) latitude-weighted sums over this rank's window."""
        f, o = pred.double(), truth.double()
        fa, oa = f - self.clim, o - self.clim
        w = self.weight
        ncols = f.shape[-1]
        wsum = (w.sum() * ncols).expand(f.shape[0], f.shape[1])
        parts = [((f - o) ** 2 * w).sum((-2, -1)), (fa * oa * w).sum((-2, -1)), (fa * fa * w).sum((-2, -1)),
                 (oa * oa * w).sum((-2, -1)), wsum]
        return torch.stack(parts, dim=-1)

    @torch.no_grad()
    def run(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """Scores of ``forward`` (one model step on this rank's window); collective over the world."""
        topo, nl, nc = self.topo, len(self.leads), len(self.channels)
        sums = np.zeros((len(self.starts), nl, nc, _NSUMS), dtype=np.float64)
        mine = range(topo.data_rank, len(self.starts), topo.data_size)
        for i in mine:
            seq = self.reader.sequences([int(self.starts[i])], max(self.leads))[0]
            state = seq[0:1]
            for step in range(1, max(self.leads) + 1):
                state = forward(state).float()
                if step in self.leads:
                    sums[i, self.leads.index(step)] = self._sums(state, seq[step:step + 1])[0].cpu().numpy()
        sums = topo.world.all_reduce(sums, tag="validate")
        sums /= topo.loss_copies
        mse = sums[..., 0] / sums[..., 4]
        rmse = np.sqrt(mse).mean(0) * self.stds[None, :]
        acc = acc_from_sums(np.moveaxis(sums[..., 1:4], -1, 0)).mean(0)
        out = {"loss": float(mse[:, 0].mean()), "leads": list(self.leads), "initial_times": len(self.starts),
               "rmse": {}, "acc": {}}
        for j, lead in enumerate(self.leads):
            out["rmse"][str(lead)] = {c: float(rmse[j, k]) for k, c in enumerate(self.channels)}
            out["acc"][str(lead)] = {c: float(acc[j, k]) for k, c in enumerate(self.channels)}
        return out


def format_scores(scores: dict) -> str:
    """A compact multi-line table of one validation result."""
    chans = list(next(iter(scores["rmse"].values())))
    lines = [f"validation loss (lead 1, normalised MSE) {scores['loss']:.4f} over {scores['initial_times']} initial times",
             "lead  " + "  ".join(f"{c:>17s}" for c in chans) + "   (RMSE / ACC)"]
    for lead in scores["rmse"]:
        cells = [f"{scores['rmse'][lead][c]:9.3g}/{scores['acc'][lead][c]:6.3f}" for c in chans]
        lines.append(f"{lead:>4s}  " + "  ".join(f"{x:>17s}" for x in cells))
    return "\n".join(lines)
