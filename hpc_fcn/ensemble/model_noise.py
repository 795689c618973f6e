"""The stochastic model's token noise, keyed by (seed, initial time, member) and counted by (step, token, channel).

Each member's noise at step ``k`` (1-based: the step that produces lead k) is drawn by the counter-based
generator (:mod:`.philox`) at the GLOBAL token index, so a rank generates only its token window and member
k's noise is the same on every layout, rank count and pass size (as the initial perturbations are).
The control member, when there is one, runs the deterministic path (no noise).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .perturb import member_key
from .philox import normals, row_normals

MODEL_NOISE_TAG = 4  # the purpose word of the Philox key (1-3: initial perturbations)


class ModelNoise:
    """Unit normals (B, h_local, w_local, noise_dim) for the members of one rank's token window."""

    def __init__(self, noise_dim: int, token_grid: tuple[int, int], token_rows: slice, token_cols: slice,
                 seed: int, control: int | None = None):
        if noise_dim < 1:
            raise ValueError(f"model noise needs noise_dim >= 1, got {noise_dim}")
        self.dim = int(noise_dim)
        self.H, self.W = (int(n) for n in token_grid)
        self.rows = range(*token_rows.indices(self.H))
        self.cols = range(*token_cols.indices(self.W))
        self.seed = int(seed)
        self.control = control  # this member index gets no noise (None: every member is stochastic)

    def member(self, init_hours: int, member: int, step: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(h_local, w_local, noise_dim) float32 noise of one member at one step."""
        shape = (len(self.rows), len(self.cols), self.dim)
        if member == self.control:
            return torch.zeros(shape, device=device)
        key = member_key(self.seed, init_hours, member, MODEL_NOISE_TAG)
        start = self._starts(step, device)
        if self.dim % 2 == 0:
            return row_normals(start, self.dim, 0, key)
        return normals(start.unsqueeze(-1) + torch.arange(self.dim, device=device), key)

    def sample(self, init_hours: int, members: Sequence[int], step: int,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """(len(members), h_local, w_local, noise_dim) noise of ``members`` at ``step``, drawn in one batch
        (the members' keys broadcast over the counters; equal to :meth:`member` bit for bit)."""
        members = list(members)
        if not members:
            return torch.zeros((0, len(self.rows), len(self.cols), self.dim), device=device)
        keys = [member_key(self.seed, init_hours, m, MODEL_NOISE_TAG) for m in members]
        key = tuple(torch.tensor([k[i] for k in keys], device=device, dtype=torch.int64).view(-1, 1, 1, 1)
                    for i in (0, 1))
        start = self._starts(step, device)
        if self.dim % 2 == 0:
            z = row_normals(start, self.dim, 0, key)
        else:
            z = normals(start.unsqueeze(-1) + torch.arange(self.dim, device=device), key)
        z = z.expand(len(members), *z.shape[1:]).contiguous()
        if self.control in members:
            z[members.index(self.control)] = 0.0
        return z

    def _starts(self, step: int, device) -> torch.Tensor:
        """The counter of each window token's first channel at ``step`` (h_local, w_local)."""
        r = torch.tensor(list(self.rows), device=device, dtype=torch.int64).view(-1, 1)
        c = torch.tensor(list(self.cols), device=device, dtype=torch.int64).view(1, -1)
        return ((int(step) * self.H + r) * self.W + c) * self.dim
