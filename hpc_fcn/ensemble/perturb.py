"""Initial-condition perturbations, in normalised units (a fraction of each channel's std).

The noise of member k is keyed by (seed, initial time, k) and drawn by a counter-based generator
(:mod:`.philox`) at the GLOBAL grid index of every point, on the device the members live on: a rank
generates only its window, and a member is the same whatever the layout, rank count or batch size.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import ConfigError
from .config import PerturbationConfig
from .philox import normals, row_normals

EARTH_RADIUS_KM = 6371.0
_TAGS = {"gaussian": 1, "spherical": 2, "bred": 3}
_GRID, _SPECTRUM_RE, _SPECTRUM_IM = 0, 1, 2  # counter streams of one member's key
_CPU_ROWS = 32  # rows per chunk of white noise on a CPU: ~23k counter pairs at 0.25 degrees, a few MB per pass


def member_key(seed: int, init_hours: int, member: int, tag: int) -> tuple[int, int]:
    """The 64-bit Philox key of (seed, initial time, member, purpose)."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, init_hours & 0xFFFFFFFF,
                                    (init_hours >> 32) & 0xFFFFFFFF, member, tag]).generate_state(2)
    return int(words[0]), int(words[1])


def channel_amplitudes(cfg: PerturbationConfig, channels: Sequence[str]) -> torch.Tensor:
    unknown = sorted(set(cfg.channel_amplitude) - set(channels))
    if unknown:
        raise ConfigError(f"config key 'perturbation.channel_amplitude': unknown channel(s) {', '.join(unknown)}; "
                          f"the model channels are {', '.join(channels)}")
    return torch.tensor([cfg.channel_amplitude.get(c, cfg.amplitude) for c in channels], dtype=torch.float32)


class NoiseField:
    """Unit-variance noise on the global (nlat, nlon) model grid: white (gaussian) or correlated on the sphere."""

    def __init__(self, kind: str, nlat: int, nlon: int, n_channels: int, length_scale_km: float = 500.0):
        self.kind, self.nlat, self.nlon, self.n_channels = kind, nlat, nlon, n_channels
        if kind == "spherical":
            import torch_harmonics as th
            # The model grid is the equiangular grid with both poles minus its south-pole row.
            full = nlat + 1
            ratio = EARTH_RADIUS_KM / length_scale_km
            self.lmax = int(min(full - 1, nlon // 2, math.ceil(5.0 * ratio) + 1))
            self.isht = th.InverseRealSHT(full, nlon, lmax=self.lmax, mmax=self.lmax, grid="equiangular")
            ell = torch.arange(self.lmax, dtype=torch.float64)
            # Gaussian-shaped correlation of width L on the sphere: variance spectrum exp(-l(l+1)(L/R)^2 / 2).
            spectrum = torch.exp(-0.5 * ell * (ell + 1) / ratio ** 2)
            spectrum[0] = 0.0  # no global-mean offset
            self.sigma = spectrum.sqrt().float()[:, None]
            self.mask = torch.tril(torch.ones(self.lmax, self.lmax)).bool()  # m <= l
            self.counters = n_channels * self.lmax * self.lmax  # per field (and per stream)
            self._isht_on: dict[torch.device, torch.nn.Module] = {}
        elif kind != "gaussian":
            raise ValueError(f"unknown noise kind {kind!r}")

    def sample(self, key: tuple[int, int], rows: slice | None = None, cols: slice | None = None,
               device: torch.device | str = "cpu", counter_offset: int = 0) -> torch.Tensor:
        """(C, rows, cols) float32 on ``device`` with unit RMS per channel over the global grid.

        White noise is drawn for the window only (counter = global flat index); correlated noise is a
        global field (random spectral coefficients, inverse transform, global RMS) that is then sliced.
        ``counter_offset`` (correlated only) moves the coefficients' counters: more fields from one key.
        """
        rows = rows if rows is not None else slice(None)
        cols = cols if cols is not None else slice(None)
        if self.kind == "gaussian":
            c = torch.arange(self.n_channels, device=device).view(-1, 1)
            r = torch.arange(*rows.indices(self.nlat), device=device).view(1, -1)
            c0, c1, _ = cols.indices(self.nlon)
            start = (c * self.nlat + r) * self.nlon  # counter of each row's first point
            if torch.device(device).type != "cpu":
                return self._white(start, c0, c1, key)
            # on a CPU, a few rows at a time: the generator's dozens of elementwise passes then stay in the cache
            # (3.6x faster than whole 0.25-degree fields; every value is a function of its counter alone)
            flat = start.reshape(-1)
            out = torch.empty((flat.numel(), c1 - c0), device=device)
            for i in range(0, flat.numel(), _CPU_ROWS):
                out[i:i + _CPU_ROWS] = self._white(flat[i:i + _CPU_ROWS], c0, c1, key)
            return out.view(*start.shape, c1 - c0)
        shape = (self.n_channels, self.lmax, self.lmax)
        index = torch.arange(counter_offset, counter_offset + math.prod(shape), device=device).view(shape)
        re = normals(index, key, _SPECTRUM_RE)
        im = normals(index, key, _SPECTRUM_IM)
        im[..., 0] = 0.0  # m = 0 coefficients are real
        coeffs = torch.complex(re, im) * (self.sigma * self.mask).to(device)
        field = self._isht(torch.device(device))(coeffs)[:, : self.nlat]
        rms = field.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt().clamp_min(1e-12)
        return (field / rms).float()[:, rows, cols].contiguous()

    def _white(self, start: torch.Tensor, c0: int, c1: int, key: tuple[int, int]) -> torch.Tensor:
        """White normals of columns c0..c1 of the rows whose first counters are ``start``."""
        if self.nlon % 2 == 0:
            return row_normals(start, c1 - c0, c0, key, _GRID)
        return normals(start.unsqueeze(-1) + torch.arange(c0, c1, device=start.device), key, _GRID)

    def _isht(self, device: torch.device):
        """The inverse transform with its tables on ``device`` (moved once per device)."""
        if device not in self._isht_on:
            self._isht_on[device] = self.isht if device.type == "cpu" else copy.deepcopy(self.isht).to(device)
        return self._isht_on[device]


class Perturber:
    """Adds keyed perturbations to the rank's window of a (normalised) initial condition."""

    def __init__(self, cfg: PerturbationConfig, *, channels: Sequence[str], nlat: int, nlon: int,
                 rows: slice, cols: slice, seed: int, control: bool):
        self.cfg = cfg
        self.rows, self.cols = rows, cols
        self.seed = seed
        self.control = control
        self.amp = channel_amplitudes(cfg, channels)[:, None, None]
        kind = "spherical" if cfg.method == "spherical" else "gaussian"
        self.noise = None if cfg.method == "none" else NoiseField(kind, nlat, nlon, len(channels), cfg.length_scale_km)

    def is_control(self, member: int) -> bool:
        return self.cfg.method == "none" or (self.control and member == 0)

    def initial_noise(self, init_hours: int, member: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The member's scaled noise on this rank's window, generated on ``device`` (zeros for the control)."""
        if self.is_control(member):
            return torch.zeros((self.amp.shape[0],) + self._window_shape(), device=device)
        key = member_key(self.seed, init_hours, member, _TAGS[self.cfg.method])
        return self.noise.sample(key, self.rows, self.cols, device) * self.amp.to(device)

    def _window_shape(self) -> tuple[int, int]:
        n_r = self.rows.stop - self.rows.start
        n_c = self.cols.stop - self.cols.start
        return (n_r, n_c)

    def perturb(self, x0: torch.Tensor, init_hours: int, members: Sequence[int]) -> torch.Tensor:
        """(C, r, c) initial condition -> (len(members), C, r, c) perturbed members."""
        noise = torch.stack([self.initial_noise(init_hours, m, x0.device) for m in members])
        return x0.unsqueeze(0) + noise.to(x0.dtype)


def bred_analysis_times(init_time, cycles: int, steps: int, dt_hours: int) -> list[np.datetime64]:
    """The analyses the bred cycles start from, earliest first: cycle c's at ``(cycles - c) * steps`` model steps
    before ``init_time`` (the last cycle ends at the initial time)."""
    t0 = np.datetime64(init_time, "h")
    return [t0 - np.timedelta64((cycles - c) * steps * dt_hours, "h") for c in range(cycles)]


def missing_bred_history(analyses, init_times, cycles: int, steps: int, dt_hours: int):
    """The first (initial time, analysis time) whose bred history ``analyses`` (:class:`hpc_fcn.data.analyses.
    Analyses`) lacks, or None when every initial time has all of its own."""
    for t in init_times:
        for a in bred_analysis_times(t, cycles, steps, dt_hours):
            if not analyses.has(a):
                return np.datetime64(t, "h"), a
    return None


def breed(x_analyses: Callable[[int], torch.Tensor], delta0: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor],
          cycles: int, steps: int, amplitude: torch.Tensor, global_rms: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Bred vectors: perturb the analysis of each cycle, integrate both runs, rescale the difference.

    ``x_analyses(c)`` is the (C, r, c) analysis at the start of cycle ``c`` (earlier analyses first),
    ``delta0`` the (B, C, r, c) seed perturbations, ``step`` one model step on a batch, ``global_rms``
    the per-member, per-channel RMS over the whole grid (reduced across spatial ranks). The result has
    the RMS ``amplitude`` per channel and is added to the initial condition by the caller.
    """
    delta = delta0
    for c in range(cycles):
        xa = x_analyses(c).unsqueeze(0)
        ctrl = xa
        pert = xa + delta
        for _ in range(steps):
            both = step(torch.cat([ctrl, pert]))
            ctrl, pert = both[:1], both[1:]
        diff = pert - ctrl
        rms = global_rms(diff).clamp_min(1e-12)
        delta = diff / rms * amplitude
    return delta
