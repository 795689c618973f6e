"""Synthetic 'weather' in the FourCastNet ERA5 layout, made by the forced shallow-water equations.

The flow is a single fluid layer on the rotating Earth (torch-harmonics' spherical shallow-water
solver supplies the grid, the operators and the Legendre tables). Newtonian relaxation of the layer
vorticity and thickness toward a balanced equilibrium (two narrow, barotropically unstable
mid-latitude jets and a stationary wave), a weak random vorticity source in mid-latitudes, and
hyperdiffusion make it a statistically steady, chaotic flow: it has a climatology, and eddies that the
jets' instability makes grow, travel and decay on time scales of days. Each year is an independent run from randomised,
balanced jets, spun up before recording; all years of a dataset are integrated together as one
batch. The simulation runs on a finer Gaussian grid than the one stored and is spectrally truncated
to the stored equiangular grid (rows from pole to pole, both included).

    python -m hpc_fcn.data.synth OUTDIR [--seed N --nlat 65 --nlon 128 ...]
    python -m hpc_fcn.data.synth --builtin          # the default dataset, into builtin_root()
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

SIX_HOURS = 21600.0
DAY = 86400.0

# name -> (CF units, CF standard name, long name)
CHANNEL_ATTRS = {
    "u": ("m s-1", "eastward_wind", "eastward wind of the fluid layer"),
    "v": ("m s-1", "northward_wind", "northward wind of the fluid layer"),
    "z": ("m2 s-2", "geopotential", "geopotential of the free surface (g times layer thickness)"),
    "vo": ("s-1", "atmosphere_relative_vorticity", "relative vorticity"),
    "d": ("s-1", "divergence_of_wind", "horizontal divergence"),
}
CHANNELS = tuple(CHANNEL_ATTRS)
GENERATOR_VERSION = 3
BUILTIN_ENV_VAR = "HPC_FCN_DATA"


def builtin_root() -> Path:
    """Directory of the built-in dataset (it may not exist yet): ``$HPC_FCN_DATA`` if set, else
    ``~/.cache/hpc_fcn/builtin-sw-v<GENERATOR_VERSION>``."""
    env = os.environ.get(BUILTIN_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "hpc_fcn" / f"builtin-sw-v{GENERATOR_VERSION}"


class SynthError(ValueError):
    """Bad generator options (raised before any work is done)."""


@dataclass(frozen=True)
class SynthOptions:
    """Everything that determines the generated dataset; stored in metadata.json."""

    seed: int = 0
    nlat: int = 65
    nlon: int = 128
    # the years of each split, written to the folder of its name (train/, test/: validation, out_of_sample/)
    train_years: tuple[int, ...] = (1996, 1997, 1998, 1999, 2000, 2001, 2002, 2003)
    test_years: tuple[int, ...] = (2004,)
    out_of_sample_years: tuple[int, ...] = (2005,)
    steps_per_year: int = 730
    resolution_factor: float = 1.25
    spinup_days: float = 40.0
    threads: int = field(default_factory=lambda: min(os.cpu_count() or 1, 8))  # the output does not depend on it
    # physics
    mean_depth_m: float = 5500.0
    relax_days: float = 6.0
    hyperdiff_hours: float = 3.0
    jets: tuple[tuple[float, float, float], ...] = ((45.0, 60.0, 6.0), (-48.0, 60.0, 6.0))
    stationary_wave: tuple[float, float, float, float] = (2.0, 10.0, 50.0, 12.0)
    stir_rms: float = 2.0e-11
    stir_days: float = 2.0
    stir_degree: float = 10.0

    def check(self) -> None:
        if self.nlat < 9 or self.nlat % 2 == 0:
            raise SynthError(f"--nlat {self.nlat}: need an odd number >= 9 (rows pole to pole, both included)")
        if self.nlon < 16 or self.nlon % 8 or self.nlon != 2 * (self.nlat - 1):
            raise SynthError(f"--nlon {self.nlon}: need nlon = 2 * (nlat - 1) and a multiple of 8 "
                             f"(e.g. --nlat 65 --nlon 128)")
        if self.resolution_factor < 1.0:
            raise SynthError(f"--resolution-factor {self.resolution_factor}: must be >= 1")
        if self.steps_per_year < 2:
            raise SynthError(f"--steps-per-year {self.steps_per_year}: must be >= 2")
        years = self.years
        if not self.train_years or not self.test_years or not self.out_of_sample_years:
            raise SynthError("need at least one train, one test and one out_of_sample year")
        if len(set(years)) != len(years):
            raise SynthError(f"years must be distinct across splits, got {years}")
        if self.spinup_days < 0 or self.threads < 1:
            raise SynthError("--spinup-days must be >= 0 and --threads >= 1")

    @property
    def years(self) -> list[int]:
        return list(self.train_years) + list(self.test_years) + list(self.out_of_sample_years)


def builtin_options() -> SynthOptions:
    """The dataset behind the built-in model and config/ens100.yaml."""
    return SynthOptions()


# --------------------------------------------------------------------------------------------------
# Batched spherical-harmonic transforms

class FastTransforms:
    """Scalar and vector SHTs of torch-harmonics, recast as one batched matmul per transform.

    The Legendre tables are the solver's own (same grid, normalisation and sign conventions); only
    the memory layout differs, which makes batches of fields several times faster on CPU.
    """

    def __init__(self, solver, dtype: torch.dtype):
        self.nlon = solver.nlon
        self.mmax = solver.sht.mmax
        t = lambda w: w.transpose(-1, -2).contiguous().to(dtype)  # noqa: E731
        self.fwd = t(solver.sht.weights)                                # (m, lat, l)
        self.inv = t(solver.isht.pct)                                   # (m, l, lat)
        vf, vi = t(solver.vsht.weights), t(solver.ivsht.dpct)           # (2, m, lat, l), (2, m, l, lat)
        self.vfwd = torch.cat((vf[0], vf[1]), dim=-1).contiguous()      # (m, lat, 2l)
        self.vinv = torch.cat((vi[0], vi[1]), dim=-1).contiguous()      # (m, l, 2lat)

    def _rows_from_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ..., lat, lon) real -> (m, N*.../re-im, lat) real rows of Fourier coefficients."""
        f = torch.fft.rfft(x, dim=-1, norm="forward")[..., : self.mmax]
        r = torch.view_as_real(f)                                       # (N, ..., lat, m, 2)
        nd = r.dim()
        r = r.permute(nd - 2, *range(nd - 3), nd - 1, nd - 3)           # (m, N, ..., 2, lat)
        return r.reshape(r.shape[0], -1, r.shape[-1])

    def _rows_from_spec(self, c: torch.Tensor) -> torch.Tensor:
        """(N, ..., l, m) complex -> (m, N*.../re-im, l) real rows."""
        r = torch.view_as_real(c)                                       # (N, ..., l, m, 2)
        nd = r.dim()
        r = r.permute(nd - 2, *range(nd - 3), nd - 1, nd - 3)
        return r.reshape(r.shape[0], -1, r.shape[-1])

    @staticmethod
    def _complex(out: torch.Tensor, lead: Sequence[int]) -> torch.Tensor:
        """(m, N*.../re-im, n) -> (N, ..., n, m) complex."""
        m, n = out.shape[0], out.shape[-1]
        out = out.reshape(m, *lead, 2, n)
        nd = out.dim()
        out = out.permute(*range(1, nd - 2), nd - 1, 0, nd - 2).contiguous()
        return torch.view_as_complex(out)

    def _to_grid(self, f: torch.Tensor) -> torch.Tensor:
        f.imag[..., 0] = 0.0  # a real field's m = 0 coefficient is real
        return torch.fft.irfft(f, n=self.nlon, dim=-1, norm="forward")

    def sht(self, x: torch.Tensor) -> torch.Tensor:
        return self._complex(torch.bmm(self._rows_from_grid(x), self.fwd), x.shape[:-2])

    def isht(self, c: torch.Tensor) -> torch.Tensor:
        return self._to_grid(self._complex(torch.bmm(self._rows_from_spec(c), self.inv), c.shape[:-2]))

    @staticmethod
    def _combine(p: torch.Tensor, lead: Sequence[int]) -> torch.Tensor:
        """Mix the two Legendre tables' products into spheroidal/toroidal parts (torch-harmonics' algebra)."""
        m, n2 = p.shape[0], p.shape[-1]
        n = n2 // 2
        p = p.reshape(m, -1, 2, 2, n2)                                  # (m, N, comp, re-im, 2n)
        p0, p1 = p[..., :n], p[..., n:]
        r0, i0, r1, i1 = p0[:, :, 0, 0], p0[:, :, 0, 1], p0[:, :, 1, 0], p0[:, :, 1, 1]
        s0, j0, s1, j1 = p1[:, :, 0, 0], p1[:, :, 0, 1], p1[:, :, 1, 0], p1[:, :, 1, 1]
        out = torch.stack((torch.stack((r0 - j1, i0 + s1), dim=2),
                           torch.stack((-j0 - r1, s0 - i1), dim=2)), dim=2)  # (m, N, comp, re-im, n)
        return out.reshape(m, -1, n), (*lead, 2)

    def vsht(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ..., 2, lat, lon) vector field -> (N, ..., 2, l, m) coefficients."""
        out, lead = self._combine(torch.bmm(self._rows_from_grid(x), self.vfwd), x.shape[:-3])
        return self._complex(out, lead)

    def ivsht(self, c: torch.Tensor) -> torch.Tensor:
        out, lead = self._combine(torch.bmm(self._rows_from_spec(c), self.vinv), c.shape[:-3])
        return self._to_grid(self._complex(out, lead))


# --------------------------------------------------------------------------------------------------
# The forced shallow-water model

def _truncation(nlon: int) -> int:
    """Number of degrees kept for a grid with nlon longitudes (triangular, alias-free for quadratic terms)."""
    return nlon // 3 + 1


class ForcedShallowWater:
    """Batched, semi-implicit, forced-dissipative shallow-water model on the sphere.

    State: spectral (B, 3, l, m) complex = relative vorticity, divergence, geopotential minus its mean.
    Nonlinear terms, relaxation and stirring use 3rd-order Adams-Bashforth; the gravity-wave terms are
    treated implicitly (so the time step is set by advection alone); hyperdiffusion is implicit.
    """

    def __init__(self, opts: SynthOptions, dtype: torch.dtype = torch.float32):
        from torch_harmonics.examples import ShallowWaterSolver

        self.opts = opts
        self.dtype = dtype
        self.cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        nlon_f = 8 * max(1, round(opts.nlon * opts.resolution_factor / 8))
        self.lmax = _truncation(nlon_f)
        self.lmax_out = _truncation(opts.nlon)
        if self.lmax < self.lmax_out:
            raise SynthError("--resolution-factor too small: the simulation must resolve the stored grid")
        n_sub = math.ceil(SIX_HOURS / (900.0 * 64.0 / (self.lmax - 1)))
        self.substeps = n_sub
        self.dt = SIX_HOURS / n_sub
        self.fine = ShallowWaterSolver(nlon_f // 2, nlon_f, self.dt, lmax=self.lmax, mmax=self.lmax,
                                       grid="legendre-gauss", havg=opts.mean_depth_m)
        self.coarse = ShallowWaterSolver(opts.nlat, opts.nlon, self.dt, lmax=self.lmax_out, mmax=self.lmax_out,
                                         grid="equiangular", havg=opts.mean_depth_m)
        self.tf = FastTransforms(self.fine, dtype)
        self.tc = FastTransforms(self.coarse, dtype)
        s = self.fine
        self.a = float(s.radius)
        self.phibar = float(s.gravity) * opts.mean_depth_m
        self.lap = s.lap.to(dtype)
        self.invlap = s.invlap.to(dtype)
        self.f = s.coriolis.to(dtype)                     # (lat, 1)
        self.lat = s.lats.to(dtype).reshape(-1, 1)
        self.lon = s.lons.to(dtype).reshape(1, -1)
        tri = torch.tril(torch.ones(self.lmax, self.lmax, dtype=dtype))
        self.tri = tri
        lmax_l = float(self.lmax - 1) * self.lmax
        hyper = (-self.lap * self.a ** 2 / lmax_l) ** 4
        self.hyper = torch.exp(-self.dt / (opts.hyperdiff_hours * 3600.0) * hyper) * tri
        self.si_den = 1.0 - (0.75 * self.dt) ** 2 * self.lap * self.phibar
        self.eq = self.equilibrium()
        l = torch.arange(self.lmax, dtype=dtype).reshape(-1, 1)
        self.stir_shape = torch.exp(-((l - opts.stir_degree) / 3.0) ** 2) * tri
        self.stir_shape[0] = 0.0
        band = torch.exp(-((self.lat.abs() - math.radians(45.0)) / math.radians(15.0)) ** 2)
        self.stir_band = band / band.square().mean().sqrt()
        self.stir = None

    # --- operators on (B, ..., l, m) spectra --------------------------------------------------
    def uv(self, vd: torch.Tensor, tf: FastTransforms | None = None, invlap=None) -> torch.Tensor:
        """Winds (..., 2, lat, lon) from vorticity/divergence spectra (..., 2, l, m)."""
        tf = tf or self.tf
        invlap = self.invlap if invlap is None else invlap
        return tf.ivsht(vd * (invlap / self.a))

    def vrtdiv(self, w: torch.Tensor) -> torch.Tensor:
        """Spectra of curl and divergence (..., 2, l, m) of a vector field (..., 2, lat, lon)."""
        return self.tf.vsht(w) * (self.lap * self.a)

    def balanced_phi(self, zeta: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """Geopotential (minus mean) in nonlinear balance with a non-divergent wind (zero d(div)/dt)."""
        zg = self.tf.isht(zeta)
        flux = uv * (zg + self.f).unsqueeze(-3)
        curl = self.vrtdiv(flux)[..., 0, :, :]
        ke = self.tf.sht(0.5 * (uv ** 2).sum(-3))
        phi = self.invlap * curl - ke
        phi[..., 0, 0] = 0.0
        return phi

    def jet_wind(self, jets) -> torch.Tensor:
        """Zonal wind (lat, lon) of Gaussian jets given as (latitude deg, speed m/s, half-width deg)."""
        lat = self.lat.double()
        u = torch.zeros_like(lat)
        for lat0, speed, width in jets:
            u = u + speed * torch.exp(-((lat - math.radians(lat0)) / math.radians(width)) ** 2)
        return (u * torch.cos(lat)).expand(-1, self.lon.shape[1]).to(self.dtype)

    def equilibrium(self) -> torch.Tensor:
        """Relaxation target (3, l, m): the jets plus a stationary wave, non-divergent and balanced."""
        u = self.jet_wind(self.opts.jets)
        zeta = self.vrtdiv(torch.stack((u, torch.zeros_like(u))))[0]
        k, speed, lat0, width = self.opts.stationary_wave
        w = math.radians(width)
        psi = speed * self.a * w * torch.cos(k * self.lon) * torch.exp(-((self.lat - math.radians(lat0)) / w) ** 2)
        zeta = (zeta + self.lap * self.tf.sht(psi)) * self.tri
        vd = torch.stack((zeta, torch.zeros_like(zeta)))
        phi = self.balanced_phi(zeta, self.uv(vd))
        return torch.stack((zeta, torch.zeros_like(zeta), phi)) * self.tri

    def initial_state(self, gens: Sequence[torch.Generator]) -> torch.Tensor:
        """Balanced random jets plus balanced synoptic-scale vortices, one member per generator."""
        states = []
        l = torch.arange(self.lmax, dtype=torch.float64).reshape(-1, 1)
        shape = torch.exp(-((l - 10.0) / 5.0) ** 2) * self.tri.double()
        for g in gens:
            jets = []
            for lat0, speed, width in self.opts.jets:
                r = torch.rand(3, generator=g, dtype=torch.float64)
                jets.append((lat0 + 10.0 * (r[0].item() - 0.5), speed * (0.7 + 0.5 * r[1].item()),
                             width * (0.8 + 0.4 * r[2].item())))
            u = self.jet_wind(jets)
            zeta = self.vrtdiv(torch.stack((u, torch.zeros_like(u))))[0]
            noise = torch.complex(torch.randn(self.lmax, self.lmax, generator=g, dtype=torch.float64),
                                  torch.randn(self.lmax, self.lmax, generator=g, dtype=torch.float64)) * shape
            noise[:, 0] = noise[:, 0].real.to(noise.dtype)
            noise[0, 0] = 0.0
            rms = self.tf.isht(noise.to(self.cdtype)).pow(2).mean().sqrt()
            zeta = zeta + noise.to(self.cdtype) * (2.0e-5 / rms)
            vd = torch.stack((zeta, torch.zeros_like(zeta)))
            phi = self.balanced_phi(zeta, self.uv(vd))
            states.append(torch.stack((zeta, torch.zeros_like(zeta), phi)) * self.tri)
        return torch.stack(states)

    def update_stirring(self, gens: Sequence[torch.Generator], interval_s: float) -> None:
        """Advance the random vorticity source (AR(1) in time, synoptic scales, mid-latitudes).

        It stands in for the baroclinic eddies that a single layer cannot make by itself.
        """
        noise = []
        for g in gens:
            re = torch.randn(self.lmax, self.lmax, generator=g, dtype=torch.float64)
            im = torch.randn(self.lmax, self.lmax, generator=g, dtype=torch.float64)
            noise.append(torch.complex(re, im).to(self.cdtype))
        grid = self.tf.isht(torch.stack(noise) * self.stir_shape) * self.stir_band
        grid = grid / grid.square().mean(dim=(-2, -1), keepdim=True).sqrt()
        fresh = self.tf.sht(grid) * (self.opts.stir_rms * self.tri)
        fresh[:, 0, 0] = 0.0
        if self.stir is None:
            self.stir = fresh
        else:
            rho = math.exp(-interval_s / (self.opts.stir_days * DAY))
            self.stir = rho * self.stir + math.sqrt(1.0 - rho * rho) * fresh

    def tendency(self, s: torch.Tensor) -> torch.Tensor:
        """Explicit tendencies: advection and relaxation toward ``eq`` (the linear gravity-wave terms excluded)."""
        grid = self.tf.isht(s[:, 0::2])                        # vorticity, geopotential anomaly
        uv = self.uv(s[:, :2])
        flux = torch.stack((uv * (grid[:, 0:1] + self.f), uv * grid[:, 1:2]), dim=1)
        vd = self.tf.vsht(flux) * (self.lap * self.a)           # (B, 2 fluxes, curl/div, l, m)
        ke = self.tf.sht(0.5 * (uv ** 2).sum(1))
        adv = torch.stack((-vd[:, 0, 1] + (0.0 if self.stir is None else self.stir),
                           vd[:, 0, 0] - self.lap * ke, -vd[:, 1, 1]), dim=1)
        return (adv + (self.eq - s) / (self.opts.relax_days * DAY)) * self.tri

    def run(self, s: torch.Tensor, nsteps: int, history: list) -> torch.Tensor:
        """Advance nsteps; ``history`` carries the previous state and tendencies between calls.

        Implicit part: weights (3/4, 0, 1/4) on steps n+1, n, n-1 (second order and damping at high
        frequency, which keeps it stable next to Adams-Bashforth 3; Crank-Nicolson does not).
        """
        dt, beta, gamma = self.dt, 0.75 * self.dt, 0.25 * self.dt
        for _ in range(nsteps):
            prev = history[0] if history else s
            tend = [self.tendency(s)] + history[1:3]
            n0 = tend[0]
            n1 = tend[1] if len(tend) > 1 else n0
            n2 = tend[2] if len(tend) > 2 else n1
            nab = (23.0 / 12.0) * n0 - (16.0 / 12.0) * n1 + (5.0 / 12.0) * n2
            zeta = s[:, 0] + dt * nab[:, 0]
            r_d = s[:, 1] + dt * nab[:, 1] - gamma * self.lap * prev[:, 2]
            r_p = s[:, 2] + dt * nab[:, 2] - gamma * self.phibar * prev[:, 1]
            div = (r_d - beta * self.lap * r_p) / self.si_den
            phi = r_p - beta * self.phibar * div
            history[:] = [s] + tend[:2]
            s = torch.stack((zeta, div, phi), dim=1) * self.hyper
        return s

    def stored_fields(self, s: torch.Tensor) -> torch.Tensor:
        """(B, C, nlat, nlon) float32 on the stored grid, in CHANNELS order, after spectral truncation."""
        L = self.lmax_out
        sc = s[..., :L, :L]
        grid = self.tc.isht(sc)                                 # vorticity, divergence, geopotential
        uv = self.uv(sc[:, :2], tf=self.tc, invlap=self.coarse.invlap.to(self.dtype))
        z = grid[:, 2] + self.phibar
        return torch.stack((uv[:, 0], uv[:, 1], z, grid[:, 0], grid[:, 1]), dim=1).float()


# --------------------------------------------------------------------------------------------------
# Output

class _Stats:
    """Running per-channel mean/std over time and space, and the time-mean field, in float64."""

    def __init__(self, nchan: int, nlat: int, nlon: int):
        self.n = 0
        self.shift = None
        self.sum = np.zeros((nchan, nlat, nlon))
        self.sq = np.zeros(nchan)

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        if self.shift is None:
            self.shift = x.mean(axis=(-2, -1))
        self.n += 1
        self.sum += x
        self.sq += ((x - self.shift[:, None, None]) ** 2).sum(axis=(-2, -1))

    def arrays(self) -> dict[str, np.ndarray]:
        npix = self.sum.shape[1] * self.sum.shape[2]
        tmean = self.sum / self.n
        mean = tmean.mean(axis=(-2, -1))
        var = self.sq / (self.n * npix) - (mean - self.shift) ** 2
        c = len(mean)
        return {"global_means.npy": mean.reshape(1, c, 1, 1).astype(np.float32),
                "global_stds.npy": np.sqrt(np.maximum(var, 0.0)).reshape(1, c, 1, 1).astype(np.float32),
                "time_means.npy": tmean[None].astype(np.float32)}


def stored_latitudes(nlat: int) -> np.ndarray:
    """Latitudes (degrees) of the stored equiangular rows, 90 N to 90 S, both poles included."""
    return 90.0 - 180.0 * np.arange(nlat) / (nlat - 1)


def _split_dir(opts: SynthOptions, year: int) -> str:
    """The split (= folder) of ``year``."""
    if year in opts.train_years:
        return "train"
    return "test" if year in opts.test_years else "out_of_sample"


def _metadata(opts: SynthOptions, model: ForcedShallowWater) -> dict:
    import h5py
    import torch_harmonics

    lat = stored_latitudes(opts.nlat).tolist()
    lon = (360.0 * np.arange(opts.nlon) / opts.nlon).tolist()
    gen = dataclasses.asdict(opts)
    gen.update(version=GENERATOR_VERSION, simulation_grid=f"{model.fine.nlat}x{model.fine.nlon} legendre-gauss",
               simulation_truncation=f"T{model.lmax - 1}", stored_truncation=f"T{model.lmax_out - 1}",
               time_step_s=model.dt, earth_radius_m=model.a, gravity=float(model.fine.gravity),
               omega=float(model.fine.omega),
               software={"python": platform.python_version(), "torch": torch.__version__,
                         "torch_harmonics": torch_harmonics.__version__, "numpy": np.__version__,
                         "h5py": h5py.__version__})
    return {
        "channels": list(CHANNELS),
        "units": {n: a[0] for n, a in CHANNEL_ATTRS.items()},
        "standard_names": {n: a[1] for n, a in CHANNEL_ATTRS.items()},
        "long_names": {n: a[2] for n, a in CHANNEL_ATTRS.items()},
        "dt_hours": 6, "nlat": opts.nlat, "nlon": opts.nlon, "lat": lat, "lon": lon,
        "time_origin": "sample i of file YYYY.h5 is YYYY-01-01T00:00 + 6 h * i",
        "years": {"train": list(opts.train_years), "test": list(opts.test_years),
                  "out_of_sample": list(opts.out_of_sample_years)},
        "generator": gen,
        "description": ("Synthetic weather from the forced-dissipative shallow-water equations on the rotating "
                        "Earth (hpc_fcn.data.synth): relaxed toward two balanced mid-latitude jets and a "
                        "stationary wave, stirred by random synoptic-scale vorticity sources, with "
                        "hyperdiffusion. Each year is an independent, "
                        "spun-up run; statistics are from the training years only."),
    }


def generate(outdir: str | os.PathLike, opts: SynthOptions, progress: bool = True, overwrite: bool = False) -> Path:
    """Write the dataset to ``outdir`` (via a temporary directory renamed at the end) and return its path."""
    import h5py
    from tqdm import tqdm

    opts.check()
    out = Path(outdir).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SynthError(f"{out} already exists and is not empty; remove it or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        model = ForcedShallowWater(opts)
        years = opts.years
        gens = [torch.Generator().manual_seed(opts.seed * 1_000_003 + y) for y in years]
        state = model.initial_state(gens)
        history: list = []
        spin = int(round(opts.spinup_days * DAY / model.dt))
        for sub in ("train", "test", "out_of_sample", "stats"):
            (tmp / sub).mkdir(parents=True)
        files = [h5py.File(tmp / _split_dir(opts, y) / f"{y}.h5", "w") for y in years]
        shape = (opts.steps_per_year, len(CHANNELS), opts.nlat, opts.nlon)
        dsets = [f.create_dataset("fields", shape=shape, dtype="f4", chunks=(1, 1, opts.nlat, opts.nlon),
                                  track_times=False) for f in files]
        is_train = [y in opts.train_years for y in years]
        stats = _Stats(len(CHANNELS), opts.nlat, opts.nlon)
        bar = tqdm(total=spin + opts.steps_per_year * model.substeps, unit="step", disable=not progress,
                   desc=f"shallow water x{len(years)} years", smoothing=0.05)
        done = 0
        _STEPPING[0] = True
        while done < spin:
            _check_stop()
            model.update_stirring(gens, SIX_HOURS)
            n = min(model.substeps, spin - done)
            state = model.run(state, n, history)
            done += n
            bar.update(n)
        for t in range(opts.steps_per_year):
            _check_stop()
            if t:
                model.update_stirring(gens, SIX_HOURS)
                state = model.run(state, model.substeps, history)
                bar.update(model.substeps)
            fields = model.stored_fields(state).numpy()
            if not np.isfinite(fields).all():
                raise RuntimeError(f"the simulation blew up at sample {t}; try a larger --resolution-factor")
            for b, ds in enumerate(dsets):
                ds[t] = fields[b]
                if is_train[b]:
                    stats.add(fields[b])
        bar.update(model.substeps)
        _STEPPING[0] = False
        _check_stop()  # a signal after the last step
        bar.close()
        for f in files:
            f.close()
        for name, arr in stats.arrays().items():
            np.save(tmp / "stats" / name, arr)
        (tmp / "metadata.json").write_text(json.dumps(_metadata(opts, model), indent=1) + "\n")
        if overwrite and out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # fails, leaving ``out`` alone, if another process filled it meanwhile
    finally:
        _STEPPING[0] = False
        torch.set_num_threads(old_threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


_STOP: list[int] = []  # the signal that asked the generator to stop (set by the command line's handler)
_STEPPING = [False]  # inside the time-stepping loops, which check _STOP between steps


def _on_signal(signum, frame) -> None:
    """Stop at the next step inside the loops (raising here could land in a callback whose exceptions are only
    printed), at once elsewhere (e.g. waiting for the dataset lock)."""
    _STOP.append(signum)
    if not _STEPPING[0]:
        raise SystemExit(128 + signum)


def _check_stop() -> None:
    """Between steps: end through Python (the work folder is removed on the way out) once a signal asked to."""
    if _STOP:
        raise SystemExit(128 + _STOP[0])


def _remove_stale_work(out: Path) -> None:
    """Delete the work folders ``.<name>.tmp-PID`` of generators that died (killed before they could)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------------
# Command line

def _years(text: str) -> tuple[int, ...]:
    """'2000-2005' or '2000,2003' -> years."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a year list such as 2000-2005 or 2000,2003") from None
    return tuple(out)


def _renamed(old: str, new: str):
    """An argparse type that refuses flag ``old`` of earlier releases, saying its new name."""
    def refuse(text: str):
        raise argparse.ArgumentTypeError(f"{old} is now {new} (splits are named by their folders: train, test, "
                                         "out_of_sample)")
    return refuse


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, SynthOptions]:
    d = builtin_options()
    p = argparse.ArgumentParser(prog="python -m hpc_fcn.data.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", nargs="?", help="output directory (default with --builtin: the built-in data root)")
    p.add_argument("--builtin", action="store_true", help="write the default built-in dataset")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--nlat", type=int, default=d.nlat, help="stored rows, pole to pole inclusive")
    p.add_argument("--nlon", type=int, default=d.nlon)
    p.add_argument("--train-years", type=_years, default=d.train_years, help="e.g. 2000-2005")
    p.add_argument("--test-years", type=_years, default=d.test_years, help="the validation years, written to test/")
    p.add_argument("--out-of-sample-years", type=_years, default=d.out_of_sample_years,
                   help="the held-out years, written to out_of_sample/")
    p.add_argument("--valid-years", type=_renamed("--valid-years", "--test-years"), help=argparse.SUPPRESS)
    p.add_argument("--steps-per-year", type=int, default=d.steps_per_year, help="6-hourly samples per year")
    p.add_argument("--resolution-factor", type=float, default=d.resolution_factor,
                   help="simulation grid / stored grid (the simulation is truncated to the stored grid)")
    p.add_argument("--spinup-days", type=float, default=d.spinup_days)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (results are bitwise "
                   "reproducible for a fixed seed and thread count)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTDIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(list(argv))
    if args.builtin:
        changed = [k for k in ("seed", "nlat", "nlon", "train_years", "test_years", "out_of_sample_years",
                               "steps_per_year", "resolution_factor", "spinup_days")
                   if getattr(args, k) != getattr(d, k)]
        if changed:
            p.error(f"--builtin fixes the options; drop {', '.join('--' + c.replace('_', '-') for c in changed)}")
    elif args.outdir is None:
        p.error("give OUTDIR, or --builtin to write the built-in dataset")
    opts = dataclasses.replace(d, seed=args.seed, nlat=args.nlat, nlon=args.nlon, train_years=args.train_years,
                               test_years=args.test_years, out_of_sample_years=args.out_of_sample_years,
                               steps_per_year=args.steps_per_year, resolution_factor=args.resolution_factor,
                               spinup_days=args.spinup_days, threads=args.threads)
    return args, opts


def main(argv: Sequence[str] | None = None) -> int:
    args, opts = parse_args(sys.argv[1:] if argv is None else argv)
    if args.outdir is None:
        outdir = builtin_root()
    else:
        outdir = Path(args.outdir)
    t0 = time.perf_counter()
    # SIGTERM (a batch system's stop, kill) ends the run through Python, so the work folder is removed
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        with contextlib.ExitStack() as stack:
            if args.builtin:  # the lock a run that generates the built-in dataset on first use takes too
                from .builtin import dataset_lock
                stack.enter_context(dataset_lock(Path(outdir), lambda m: print(m, file=sys.stderr, flush=True)))
            path = generate(outdir, opts, progress=not args.quiet, overwrite=args.overwrite)
    except SynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
