"""Initial perturbations from an ensemble of analyses: scaled member-minus-mean differences.

This is how operational centres perturb initial conditions (ECMWF's ENS starts from its EDA); ERA5's
ensemble of data assimilations, converted by ``python -m hpc_fcn.data.convert``, is the real example.
Keying: perturbed member p (p = k - 1 for member k when member 0 is the control, else p = k) takes the
perturbation of analysis member j = p mod N, added for p < N and subtracted for N <= p < 2N (symmetric
pairs); more than 2N perturbed members would repeat a perturbation and are refused. A perturbation is a
pointwise difference, so each rank reads only its window of the N analyses and every layout gives the same
members.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import ConfigError
from ..data.era5 import DataError, FCNDataset
from .config import EnsembleConfig, PerturbationConfig


def analysis_member(member: int, control: bool, n_analyses: int) -> tuple[int, float] | None:
    """(analysis member index, sign) of ensemble member ``member``; None for the control."""
    if control and member == 0:
        return None
    p = member - 1 if control else member
    if p >= 2 * n_analyses:
        raise ConfigError(f"config key 'ensemble.members': member {member} needs perturbation {p + 1} but "
                          f"{n_analyses} analysis members give {2 * n_analyses} (each added and subtracted): use at "
                          f"most {2 * n_analyses + int(control)} members")
    return p % n_analyses, (1.0 if p < n_analyses else -1.0)


class AnalysisEnsemblePerturber:
    """Adds an analysis ensemble's scaled member-minus-mean perturbations to the rank's window."""

    def __init__(self, cfg: PerturbationConfig, *, source: FCNDataset, stds: Sequence[float], rows: slice,
                 cols: slice, control: bool, members: int):
        self.cfg, self.source, self.rows, self.cols, self.control = cfg, source, rows, cols, control
        self.stds = np.asarray(stds, dtype=np.float64).reshape(-1, 1, 1)
        self.n = len(source.member_numbers)
        analysis_member(members - 1, control, self.n)  # the largest member must have a perturbation
        self._cached: tuple[int, torch.Tensor] | None = None

    @classmethod
    def for_run(cls, cfg: EnsembleConfig, data_root: Path, ds: FCNDataset, rows: slice, cols: slice):
        """The perturber of an ensemble run: the members from ``perturbation.analysis_root`` (or the data)."""
        pc = cfg.perturbation
        root = Path(pc.analysis_root).expanduser() if pc.analysis_root is not None else Path(data_root)
        key = "perturbation.analysis_root" if pc.analysis_root is not None else "data.root"
        split_dir = cfg.data.split_dir(cfg.initial_conditions.split)
        try:
            source = FCNDataset(root, split_dir, channels=ds.channels, stats_dir=None)
        except DataError as exc:
            raise ConfigError(f"config key '{key}': perturbation.method analysis_ensemble: {exc}") from None
        if source.member_numbers is None or len(source.member_numbers) < 2:
            raise ConfigError(f"config key '{key}': perturbation.method analysis_ensemble needs an ensemble of "
                              f"analyses in {source.split_path} (year files with 'members', at least 2); convert "
                              "one, e.g. ERA5's EDA in GRIB, with python -m hpc_fcn.data.convert (docs/era5.md)")
        if (source.nlat, source.nlon) != (ds.nlat, ds.nlon) or not np.allclose(source.lat, ds.lat):
            raise ConfigError(f"config key '{key}': the analysis ensemble's grid {source.nlat} x {source.nlon} "
                              f"differs from the data's {ds.nlat} x {ds.nlon}: convert both on the same grid")
        return cls(pc, source=source, stds=ds.stds, rows=rows, cols=cols, control=cfg.ensemble.control,
                   members=cfg.ensemble.members)

    def is_control(self, member: int) -> bool:
        return self.control and member == 0

    def perturbations(self, init_hours: int) -> torch.Tensor:
        """(N, C, r, c) scaled member-minus-mean of the analyses at the initial time, normalised units."""
        if self._cached is not None and self._cached[0] == init_hours:
            return self._cached[1]
        t = np.datetime64(int(init_hours), "h")
        try:
            index = self.source.index_of(t)
        except DataError as exc:
            raise ConfigError(f"config key 'initial_conditions': no analysis ensemble at {t}: {exc}") from None
        x = self.source.read_members(index, self.rows, self.cols).astype(np.float64)
        d = (x - x.mean(axis=0)) / self.stds * self.cfg.analysis_scale
        self._cached = (init_hours, torch.from_numpy(d.astype(np.float32)))
        return self._cached[1]

    def initial_noise(self, init_hours: int, member: int) -> torch.Tensor:
        """The member's perturbation on this rank's window (zeros for the control member)."""
        d = self.perturbations(init_hours)
        key = analysis_member(member, self.control, self.n)
        if key is None:
            return torch.zeros_like(d[0])
        j, sign = key
        return d[j] * sign

    def perturb(self, x0: torch.Tensor, init_hours: int, members: Sequence[int]) -> torch.Tensor:
        """(C, r, c) initial condition -> (len(members), C, r, c) perturbed members."""
        if not len(members):
            return x0.new_zeros((0,) + tuple(x0.shape))
        noise = torch.stack([self.initial_noise(init_hours, m) for m in members])
        return x0.unsqueeze(0) + noise.to(x0.device, x0.dtype)
