"""The stochastic model's token noise, keyed by (seed, initial time, member) and counted by (step, token, channel).

Each member's noise at step ``k`` (1-based: the step that produces lead k) is drawn by the counter-based
generator (:mod:`.philox`) at the GLOBAL token index, so a rank generates only its token window and member
k's noise is the same on every layout, rank count and pass size (as the initial perturbations are).
The control member, when there is one, runs the deterministic path (no noise).

Two optional properties of the noise process (the model's, recorded in its checkpoint, as FourCastNet 3's
noise is correlated in space and time):
- ``length_scale_km`` > 0: each step's innovation is a Gaussian random field on the sphere with that
  correlation length (:class:`.perturb.NoiseField` on the token grid), not independent per token;
- ``memory`` in (0, 1): an AR(1) process over steps, noise_k = memory noise_(k-1) + sqrt(1 - memory^2)
  innovation_k, unit variance at every step (memory = exp(-dt / e-folding time)).
The ensemble app may scale the whole process (``model.noise_scale``; 1: as trained).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch

from .perturb import NoiseField, member_key
from .philox import normals, row_normals

MODEL_NOISE_TAG = 4  # the purpose word of the Philox key (1-3: initial perturbations)


class ModelNoise:
    """Unit normals (B, h_local, w_local, noise_dim) for the members of one rank's token window."""

    def __init__(self, noise_dim: int, token_grid: tuple[int, int], token_rows: slice, token_cols: slice,
                 seed: int, control: int | None = None, length_scale_km: float = 0.0, memory: float = 0.0,
                 scale: float = 1.0):
        if noise_dim < 1:
            raise ValueError(f"model noise needs noise_dim >= 1, got {noise_dim}")
        if length_scale_km < 0:
            raise ValueError(f"model noise length_scale_km must be >= 0, got {length_scale_km}")
        if not 0.0 <= memory < 1.0:
            raise ValueError(f"model noise memory (AR(1) coefficient per step) must be in [0, 1), got {memory}")
        self.dim = int(noise_dim)
        self.H, self.W = (int(n) for n in token_grid)
        self.rows = range(*token_rows.indices(self.H))
        self.cols = range(*token_cols.indices(self.W))
        self.seed = int(seed)
        self.control = control  # this member index gets no noise (None: every member is stochastic)
        self.field = None if not length_scale_km else NoiseField("spherical", self.H, self.W, self.dim,
                                                                  float(length_scale_km))
        self.memory = float(memory)
        if not scale > 0:
            raise ValueError(f"model noise scale must be > 0, got {scale}")
        self.scale = float(scale)  # multiplies what sample returns; the process itself has unit variance
        # AR(1) state of the latest steps drawn: (initial time, members, device) -> (step, noise)
        self._state: OrderedDict[tuple, tuple[int, torch.Tensor]] = OrderedDict()

    @classmethod
    def for_model(cls, model, token_grid: tuple[int, int], token_rows: slice, token_cols: slice, dt_hours: float,
                  seed: int, control: int | None = None) -> "ModelNoise":
        """The noise of ``model`` (a network or its ModelConfig: ``noise_dim``, ``noise_length_km``,
        ``noise_memory_hours`` and, for a config, ``noise_scale``) for a ``dt_hours`` step."""
        return cls(model.noise_dim, token_grid, token_rows, token_cols, seed=seed, control=control,
                   length_scale_km=model.noise_length_km,
                   memory=cls.memory_per_step(model.noise_memory_hours, dt_hours),
                   scale=getattr(model, "noise_scale", 1.0))

    @staticmethod
    def memory_per_step(memory_hours: float, dt_hours: float) -> float:
        """The AR(1) coefficient of one model step for an e-folding time of ``memory_hours`` (0: none)."""
        return math.exp(-dt_hours / memory_hours) if memory_hours > 0 else 0.0

    def member(self, init_hours: int, member: int, step: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(h_local, w_local, noise_dim) float32 noise of one member at one step."""
        return self.sample(init_hours, [member], step, device)[0]

    def sample(self, init_hours: int, members: Sequence[int], step: int,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """(len(members), h_local, w_local, noise_dim) noise of ``members`` at ``step`` (1-based).

        With memory the process runs from step 1 (continued from the previous call when that was step - 1
        for the same members, so a rollout draws each step once); every member's values are elementwise, so
        they do not depend on which other members share the batch.
        """
        members = list(members)
        if not self.memory:
            return self._scaled(self.innovation(init_hours, members, step, device))
        key = (int(init_hours), tuple(members), str(device))
        k, noise = self._state.pop(key, (0, None))
        if k > step:  # a new rollout of these members
            k, noise = 0, None
        scale = math.sqrt(1.0 - self.memory ** 2)
        while k < step:
            k += 1
            fresh = self.innovation(init_hours, members, k, device)
            noise = fresh if noise is None else self.memory * noise + scale * fresh
        self._state[key] = (step, noise)
        while len(self._state) > 16:  # a training batch holds a few initial times; older ones are done
            self._state.popitem(last=False)
        return self._scaled(noise)

    def _scaled(self, noise: torch.Tensor) -> torch.Tensor:
        return noise if self.scale == 1.0 else noise * self.scale

    def innovation(self, init_hours: int, members: Sequence[int], step: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """The step's fresh unit-variance draw of ``members`` (white per token, or the correlated field)."""
        members = list(members)
        if not members:
            return torch.zeros((0, len(self.rows), len(self.cols), self.dim), device=device)
        if self.field is not None:
            return self._field_sample(init_hours, members, step, device)
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

    def _field_sample(self, init_hours: int, members: list[int], step: int, device) -> torch.Tensor:
        """The correlated innovation: per member, the global token-grid field of every noise channel from
        the member's key at counters offset by the step, sliced to this rank's window."""
        rows = slice(self.rows.start, self.rows.stop)
        cols = slice(self.cols.start, self.cols.stop)
        out = []
        for m in members:
            if m == self.control:
                out.append(torch.zeros((len(self.rows), len(self.cols), self.dim), device=device))
                continue
            key = member_key(self.seed, init_hours, m, MODEL_NOISE_TAG)
            field = self.field.sample(key, rows, cols, device, counter_offset=step * self.field.counters)
            out.append(field.permute(1, 2, 0))
        return torch.stack(out).contiguous()

    def _starts(self, step: int, device) -> torch.Tensor:
        """The counter of each window token's first channel at ``step`` (h_local, w_local)."""
        r = torch.tensor(list(self.rows), device=device, dtype=torch.int64).view(-1, 1)
        c = torch.tensor(list(self.cols), device=device, dtype=torch.int64).view(1, -1)
        return ((int(step) * self.H + r) * self.W + c) * self.dim
