#!/usr/bin/env python
"""Convert ERA5 netCDF files from the Copernicus Climate Data Store into the FourCastNet layout.

Input: single-level files (u10 v10 t2m sp msl tcwv) and pressure-level files (u v t z r on a
``pressure_level`` (new CDS) or ``level`` (old CDS) axis), time axis ``valid_time`` or ``time``, any
split into files (per variable, per level set, per month or year), packed or not. Output: ROOT/SPLIT/YYYY.h5
with ``fields`` (T, 21, rows, cols) float32, 6-hourly from Jan 1 00 UTC, in the reference channel order
(index 20, unused by the model, is filled with zeros); ROOT/metadata.json; with ``--stats-from`` also
ROOT/stats/{global_means,global_stds,time_means}.npy computed from that split (streaming, float64 sums).

Parallel: under mpirun the years are shared over the ranks, and the statistics over time chunks.
Resumable: a year counts as done only once ``YYYY.h5.done`` exists, which is written after the file is
closed and renamed into place; a re-run skips done years and rewrites any other.

    python tools/era5_to_fcn.py --input /data/cds --output /data/era5 --years 1979-2015 --split train \
        --stats-from train
    mpirun -n 8 python tools/era5_to_fcn.py --input '/data/cds/*2016*.nc' --output /data/era5 --years 2016-2017 \
        --split test
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

try:
    from hpc_fcn.data.era5 import ERA5_ATTRS, ERA5_CHANNELS
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hpc_fcn.data.era5 import ERA5_ATTRS, ERA5_CHANNELS

log = logging.getLogger("era5_to_fcn")

DT_HOURS = 6
REAL_GRID = (721, 1440)
UNUSED = "unused20"
STATS_FILES = ("global_means.npy", "global_stds.npy", "time_means.npy")

# channel -> (ERA5 short name, pressure level in hPa or None for single-level fields)
CHANNEL_SOURCES: dict[str, tuple[str, int | None]] = {
    "u10": ("u10", None), "v10": ("v10", None), "t2m": ("t2m", None), "sp": ("sp", None), "msl": ("msl", None),
    "t850": ("t", 850), "u1000": ("u", 1000), "v1000": ("v", 1000), "z1000": ("z", 1000),
    "u850": ("u", 850), "v850": ("v", 850), "z850": ("z", 850), "u500": ("u", 500), "v500": ("v", 500),
    "z500": ("z", 500), "t500": ("t", 500), "z50": ("z", 50), "r500": ("r", 500), "r850": ("r", 850),
    "tcwv": ("tcwv", None),
}
# names the same field has in CDS netCDF (new and old) and in GRIB-to-netCDF conversions
VAR_ALIASES: dict[str, tuple[str, ...]] = {
    "u10": ("u10", "10u"), "v10": ("v10", "10v"), "t2m": ("t2m", "2t"), "sp": ("sp",), "msl": ("msl",),
    "tcwv": ("tcwv",), "u": ("u",), "v": ("v",), "t": ("t",), "z": ("z",), "r": ("r",),
}
_ALIAS_OF = {alias: short for short, names in VAR_ALIASES.items() for alias in names}
TIME_DIMS = ("valid_time", "time")
LEVEL_DIMS = ("pressure_level", "level", "isobaricInhPa", "plev")
LAT_DIMS = ("latitude", "lat")
LON_DIMS = ("longitude", "lon")
EXPVER_DIM = "expver"  # old CDS: ERA5 (1) and preliminary ERA5T (5) side by side; one of them is masked


class ConversionError(RuntimeError):
    """A problem with the input files or the request, reported as one line."""


# ---------------------------------------------------------------------------------------------------
# Inventory of the input files
# ---------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """One field in one file: a variable (at one level) with its times; knows how to read a time subset."""
    path: str
    var: str  # the variable's name in the file
    dims: tuple[str, ...]
    level_index: int | None
    times: np.ndarray  # datetime64[h], increasing
    flip_lat: bool
    lon_roll: int

    def read(self, tidx: np.ndarray) -> np.ndarray:
        """(len(tidx), rows, cols) float32 at the given (increasing) time indices, north->south, lon from 0."""
        tsel: slice | list[int]
        step = int(tidx[1] - tidx[0]) if len(tidx) > 1 else 1
        if step > 0 and np.all(np.diff(tidx) == step):
            tsel = slice(int(tidx[0]), int(tidx[-1]) + 1, step)
        else:
            tsel = [int(i) for i in tidx]
        index: list = []
        for d in self.dims:
            if d in TIME_DIMS:
                index.append(tsel)
            elif d in LEVEL_DIMS:
                index.append(self.level_index)
            elif d in LAT_DIMS or d in LON_DIMS or d == EXPVER_DIM:
                index.append(slice(None))
            else:
                index.append(0)  # a length-1 axis such as 'number'
        var = open_nc(self.path).variables[self.var]
        var.set_auto_maskandscale(True)
        data = var[tuple(index)]
        kept = [d for d in self.dims if d in TIME_DIMS or d in LAT_DIMS or d in LON_DIMS or d == EXPVER_DIM]
        mask = np.ma.getmaskarray(data)
        values = np.ma.getdata(data)
        if EXPVER_DIM in kept:  # keep, per point, the first expver that has a value
            ax = kept.index(EXPVER_DIM)
            first = np.argmax(~mask, axis=ax)
            values = np.take_along_axis(values, np.expand_dims(first, ax), ax).squeeze(ax)
            mask = np.take_along_axis(mask, np.expand_dims(first, ax), ax).squeeze(ax)
            kept.remove(EXPVER_DIM)
        order = [kept.index(next(d for d in kept if d in group)) for group in (TIME_DIMS, LAT_DIMS, LON_DIMS)]
        values, mask = values.transpose(order), mask.transpose(order)
        if mask.any():
            t = int(np.argwhere(mask)[0][0])
            raise ConversionError(f"{self.path}: variable {self.var} has missing values at {self.times[tidx[t]]}")
        out = values.astype(np.float32, copy=False)
        if self.flip_lat:
            out = out[:, ::-1, :]
        if self.lon_roll:
            out = np.roll(out, self.lon_roll, axis=-1)
        if not np.all(np.isfinite(out)):
            raise ConversionError(f"{self.path}: variable {self.var} has NaN/Inf values")
        return np.ascontiguousarray(out)


_OPEN: dict = {}  # path -> open netCDF4.Dataset, so a year's many small reads do not reopen files
MAX_OPEN = 64


def open_nc(path: str):
    """An open (cached) netCDF file; the least recently opened is closed beyond MAX_OPEN."""
    import netCDF4
    nc = _OPEN.pop(path, None)
    if nc is None:
        if len(_OPEN) >= MAX_OPEN:
            _OPEN.pop(next(iter(_OPEN))).close()
        nc = netCDF4.Dataset(path)
    _OPEN[path] = nc
    return nc


def close_all() -> None:
    while _OPEN:
        _OPEN.popitem()[1].close()


def _find_dim(dims: Sequence[str], names: Sequence[str]) -> str | None:
    return next((d for d in dims if d in names), None)


def _decode_times(var) -> np.ndarray:
    """A CF time coordinate as datetime64[h]; error if a value is not on a whole hour."""
    import netCDF4
    units = getattr(var, "units", None)
    if units is None:
        raise ConversionError(f"time variable {var.name} has no 'units' attribute")
    values = np.ma.getdata(var[:])
    dates = netCDF4.num2date(values, units, calendar=getattr(var, "calendar", "standard"),
                             only_use_cftime_datetimes=False, only_use_python_datetimes=True)
    t = np.array([np.datetime64(d.replace(tzinfo=None), "s") for d in np.atleast_1d(dates)])
    h = t.astype("datetime64[h]")
    if np.any(h != t):
        raise ConversionError(f"time variable {var.name} has values that are not on whole hours")
    return h


def _levels_hpa(var) -> np.ndarray:
    values = np.asarray(var[:], dtype=np.float64)
    units = str(getattr(var, "units", "")).strip().lower()
    if units == "pa" or (units not in ("hpa", "millibars", "mbar") and values.max() > 1100.0):
        values = values / 100.0
    return values


@dataclass
class Grid:
    lat: np.ndarray  # north -> south
    lon: np.ndarray  # from 0 east
    origin: str

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.lat), len(self.lon)


def _orient_grid(path: str, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """North-to-south latitudes and longitudes from 0; returns them with the flip and roll to apply."""
    flip = bool(len(lat) > 1 and lat[0] < lat[-1])
    if flip:
        lat = lat[::-1]
    if not (np.all(np.diff(lat) < 0) and np.isclose(lat[0], 90.0) and np.isclose(lat[-1], -90.0)):
        raise ConversionError(f"{path}: latitudes must run regularly from 90 to -90 (pole to pole), got "
                              f"{lat[0]:g} .. {lat[-1]:g} in {len(lat)} rows")
    lon = np.mod(lon, 360.0)
    roll = -int(np.argmin(lon)) % len(lon)
    lon = np.roll(lon, roll)
    if not (np.all(np.diff(lon) > 0) and np.isclose(lon[0], 0.0)):
        raise ConversionError(f"{path}: longitudes must be a regular global grid starting at 0 (or -180), got "
                              f"{lon[0]:g} .. {lon[-1]:g}")
    return lat, lon, flip, roll


@dataclass
class Inventory:
    """Every field the model needs, located in the input files, on one checked grid."""
    sources: dict[str, list[Source]] = field(default_factory=dict)  # channel -> sources
    grid: Grid | None = None
    seen: dict[str, set] = field(default_factory=dict)  # short name -> levels found (None = single level)
    files: int = 0

    def add_file(self, path: str) -> None:
        import netCDF4
        try:
            nc = netCDF4.Dataset(path)
        except OSError as exc:
            raise ConversionError(f"{path}: not a readable netCDF file ({exc})") from exc
        with nc:
            found = [(name, _ALIAS_OF[name]) for name in nc.variables if name in _ALIAS_OF]
            if not found:
                log.warning("%s: no ERA5 variable of interest (has %s); skipped", path, ", ".join(nc.variables))
                return
            self.files += 1
            for name, short in found:
                self._add_variable(path, nc, name, short)

    def _add_variable(self, path: str, nc, name: str, short: str) -> None:
        var = nc.variables[name]
        dims = tuple(var.dimensions)
        tdim, ldim = _find_dim(dims, TIME_DIMS), _find_dim(dims, LEVEL_DIMS)
        ydim, xdim = _find_dim(dims, LAT_DIMS), _find_dim(dims, LON_DIMS)
        if tdim is None or ydim is None or xdim is None:
            raise ConversionError(f"{path}: variable {name} has dimensions {dims}; expected a time "
                                  f"({'/'.join(TIME_DIMS)}), latitude and longitude dimension")
        for d in dims:
            if d not in (tdim, ldim, ydim, xdim, EXPVER_DIM) and len(nc.dimensions[d]) != 1:
                raise ConversionError(f"{path}: variable {name} has an unexpected dimension {d} of length "
                                      f"{len(nc.dimensions[d])}")
        for coord in (tdim, ydim, xdim) + ((ldim,) if ldim else ()):
            if coord not in nc.variables:
                raise ConversionError(f"{path}: no coordinate variable for dimension {coord}")
        times = _decode_times(nc.variables[tdim])
        if np.any(np.diff(times) <= np.timedelta64(0, "h")):
            raise ConversionError(f"{path}: times of {name} are not strictly increasing")
        lat, lon, flip, roll = _orient_grid(path, np.asarray(nc.variables[ydim][:], dtype=np.float64),
                                            np.asarray(nc.variables[xdim][:], dtype=np.float64))
        if self.grid is None:
            self.grid = Grid(lat, lon, path)
        elif (lat.shape != self.grid.lat.shape or lon.shape != self.grid.lon.shape
              or not np.allclose(lat, self.grid.lat) or not np.allclose(lon, self.grid.lon)):
            raise ConversionError(f"{path}: grid {len(lat)} x {len(lon)} differs from {self.grid.shape[0]} x "
                                  f"{self.grid.shape[1]} of {self.grid.origin}: regrid all files alike")
        levels: list[tuple[int | None, int | None]]
        if ldim is None:
            levels = [(None, None)]
        else:
            levels = [(int(round(v)), i) for i, v in enumerate(_levels_hpa(nc.variables[ldim]))]
        self.seen.setdefault(short, set()).update(lv for lv, _ in levels)
        for channel, (want, level) in CHANNEL_SOURCES.items():
            if want != short:
                continue
            for lv, li in levels:
                if lv == level:
                    self.sources.setdefault(channel, []).append(Source(path, name, dims, li, times, flip, roll))

    def check_complete(self) -> None:
        """Every channel must be found in some file; name the variable and level that are missing."""
        missing = []
        for channel, (short, level) in CHANNEL_SOURCES.items():
            if channel in self.sources:
                continue
            found = self.seen.get(short)
            if not found:
                missing.append(f"{channel} (variable {short}: not in any input file)")
            elif level is None:
                missing.append(f"{channel} (variable {short}: found only on pressure levels)")
            else:
                have = ", ".join(str(v) for v in sorted(v for v in found if v is not None)) or "none"
                missing.append(f"{channel} (variable {short} at {level} hPa: levels found {have})")
        if missing:
            raise ConversionError("input lacks channel(s): " + "; ".join(missing))

    def locate(self, channel: str, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each target time, the index of the source holding it and the time index there (-1 = none)."""
        src = np.full(len(targets), -1, dtype=np.int64)
        idx = np.full(len(targets), -1, dtype=np.int64)
        for s, source in enumerate(self.sources[channel]):
            pos = np.searchsorted(source.times, targets)
            ok = (pos < len(source.times)) & (src < 0)
            ok[ok] = source.times[pos[ok]] == targets[ok]
            src[ok], idx[ok] = s, pos[ok]
        return src, idx


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Directories (searched recursively for *.nc) and glob patterns -> sorted file list."""
    files: set[str] = set()
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if p.is_dir():
            for ext in ("*.nc", "*.nc4", "*.netcdf"):
                files.update(str(f) for f in p.rglob(ext))
        else:
            files.update(f for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    if not files:
        raise ConversionError(f"no netCDF files match --input {' '.join(patterns)}")
    return sorted(files)


def build_inventory(files: Sequence[str], grid: tuple[int, int] | None) -> Inventory:
    inv = Inventory()
    for path in files:
        inv.add_file(path)
    if inv.grid is None:
        raise ConversionError(f"none of the {len(files)} input files holds an ERA5 variable of interest "
                              f"({', '.join(sorted(_ALIAS_OF))})")
    inv.check_complete()
    if grid is not None and inv.grid.shape != tuple(grid):
        raise ConversionError(f"input grid is {inv.grid.shape[0]} x {inv.grid.shape[1]} but {grid[0]} x {grid[1]} "
                              f"is expected (the 0.25 deg ERA5 grid); pass --grid any to accept it")
    return inv


# ---------------------------------------------------------------------------------------------------
# Conversion of one year
# ---------------------------------------------------------------------------------------------------
def year_targets(year: int, max_steps: int | None = None) -> np.ndarray:
    """The 6-hourly times of ``year`` from Jan 1 00 UTC (1460 steps, 1464 in leap years)."""
    start = np.datetime64(f"{year:04d}-01-01T00", "h")
    stop = np.datetime64(f"{year + 1:04d}-01-01T00", "h")
    t = np.arange(start, stop, np.timedelta64(DT_HOURS, "h"))
    return t[:max_steps] if max_steps else t


def plan_year(inv: Inventory, year: int, max_steps: int | None, allow_partial: bool):
    """Targets and per-channel (source, index) maps for ``year``; error naming the first gap."""
    targets = year_targets(year, max_steps)
    located = {c: inv.locate(c, targets) for c in CHANNEL_SOURCES}
    have = np.ones(len(targets), dtype=bool)
    for src, _ in located.values():
        have &= src >= 0
    n = len(targets)
    if not have.all():
        first = int(np.argmin(have))
        if allow_partial and first > 0 and not have[first:].any():
            n = first
        else:
            channel = next(c for c, (src, _) in located.items() if src[first] < 0)
            lacking = int(np.sum(located[channel][0] < 0))
            more = f" (and {lacking - 1} more {DT_HOURS}-hourly times)" if lacking > 1 else ""
            hint = "" if allow_partial else "; pass --allow-partial to convert a year that ends early"
            raise ConversionError(f"year {year}: no input has channel {channel} at {targets[first]}{more}{hint}")
    return targets[:n], {c: (src[:n], idx[:n]) for c, (src, idx) in located.items()}


def marker_path(out_dir: Path, year: int) -> Path:
    return out_dir / f"{year:04d}.h5.done"


def is_done(out_dir: Path, year: int) -> bool:
    return marker_path(out_dir, year).is_file() and (out_dir / f"{year:04d}.h5").is_file()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def convert_year(inv: Inventory, year: int, out_dir: Path, *, chunk_steps: int = 4, max_steps: int | None = None,
                 allow_partial: bool = False) -> int:
    """Write OUT/YYYY.h5 (written as .partial, renamed when complete) and then its marker; returns steps."""
    targets, located = plan_year(inv, year, max_steps, allow_partial)
    rows, cols = inv.grid.shape
    names = list(ERA5_CHANNELS)
    final, partial = out_dir / f"{year:04d}.h5", out_dir / f"{year:04d}.h5.partial"
    marker_path(out_dir, year).unlink(missing_ok=True)
    final.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        with h5py.File(partial, "w") as f:
            ds = f.create_dataset("fields", shape=(len(targets), len(names), rows, cols), dtype="f4")
            for a in range(0, len(targets), chunk_steps):
                b = min(a + chunk_steps, len(targets))
                block = np.zeros((b - a, len(names), rows, cols), dtype=np.float32)  # the unused channel stays 0
                for c, channel in enumerate(names):
                    if channel not in CHANNEL_SOURCES:
                        continue
                    src, idx = located[channel][0][a:b], located[channel][1][a:b]
                    for s in np.unique(src):
                        sel = np.nonzero(src == s)[0]
                        block[sel, c] = inv.sources[channel][int(s)].read(idx[sel])
                ds[a:b] = block
            f.attrs["channels"] = json.dumps(names)
            f.attrs["first_time"] = str(targets[0])
            f.attrs["dt_hours"] = DT_HOURS
    finally:
        close_all()
    os.replace(partial, final)
    _write_json(marker_path(out_dir, year), {"year": year, "steps": int(len(targets)), "channels": names,
                                             "rows": rows, "cols": cols, "dt_hours": DT_HOURS,
                                             "seconds": round(time.perf_counter() - t0, 1)})
    return len(targets)


def write_metadata(root: Path, grid: Grid) -> None:
    """ROOT/metadata.json: channel names, units and coordinates, read by hpc_fcn.data.era5."""
    names = list(ERA5_CHANNELS)
    attrs = {n: ERA5_ATTRS.get(n, ("1", "", n)) for n in names}
    _write_json(root / "metadata.json", {
        "channels": names, "units": {n: a[0] for n, a in attrs.items()},
        "standard_names": {n: a[1] for n, a in attrs.items()}, "long_names": {n: a[2] for n, a in attrs.items()},
        "dt_hours": DT_HOURS, "lat": grid.lat.tolist(), "lon": grid.lon.tolist(),
        "unused_channels": {UNUSED: "filled with zeros by tools/era5_to_fcn.py (mean 0, std 1)"}})


# ---------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------
@dataclass
class Moments:
    """Per-channel count, mean and sum of squared deviations, merged pairwise (Chan et al.)."""
    n: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> "Moments":  # x (T, C, rows, cols)
        x = x.astype(np.float64)
        mean = x.mean(axis=(0, 2, 3))
        m2 = ((x - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3))
        return cls(float(x.shape[0] * x.shape[2] * x.shape[3]), mean, m2)

    def merge(self, other: "Moments") -> "Moments":
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta ** 2 * self.n * other.n / n)


def year_files(split_dir: Path, years: Sequence[int] | None = None) -> list[Path]:
    files = sorted(p for p in split_dir.glob("*.h5") if p.stem.isdigit() and len(p.stem) == 4)
    if years is not None:
        files = [p for p in files if int(p.stem) in set(years)]
    return files


def compute_stats(root: Path, split: str, comm=None, *, years: Sequence[int] | None = None,
                  chunk_steps: int = 8) -> dict[str, np.ndarray]:
    """Global means/stds (1, C, 1, 1) and time means (1, C, rows, cols) of ROOT/SPLIT, written to ROOT/stats.

    Time chunks are shared over the ranks of ``comm``; sums are float64, so the result does not depend on it.
    """
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    split_dir = root / split
    files = year_files(split_dir, years)
    if not files:
        raise ConversionError(f"--stats-from {split}: no year files (YYYY.h5) in {split_dir}")
    unfinished = [p.name for p in files if not marker_path(split_dir, int(p.stem)).is_file()]
    if unfinished:
        raise ConversionError(f"--stats-from {split}: {', '.join(unfinished)} not finished (no .done marker); "
                              "re-run the conversion of those years first")
    shapes = []
    for p in files:
        with h5py.File(p, "r", locking=False) as f:
            shapes.append(f["fields"].shape)
    if len({s[1:] for s in shapes}) != 1:
        raise ConversionError(f"--stats-from {split}: year files differ in shape per step: {sorted(set(shapes))}")
    _, nchan, rows, cols = shapes[0]
    work = [(p, a, min(a + chunk_steps, s[0])) for p, s in zip(files, shapes) for a in range(0, s[0], chunk_steps)]
    moments = Moments(0.0, np.zeros(nchan), np.zeros(nchan))
    tsum = np.zeros((nchan, rows, cols), dtype=np.float64)
    for p, a, b in work[rank::size]:
        with h5py.File(p, "r", locking=False) as f:
            x = np.asarray(f["fields"][a:b], dtype=np.float32)
        moments = moments.merge(Moments.of(x))
        tsum += x.sum(axis=0, dtype=np.float64)
    steps = sum(s[0] for s in shapes)
    if comm is not None and size > 1:
        from mpi4py import MPI
        parts = comm.gather(moments, root=0)
        total = np.zeros_like(tsum) if rank == 0 else None
        comm.Reduce(tsum, total, op=MPI.SUM, root=0)
        if rank != 0:
            return {}
        moments = Moments(0.0, np.zeros(nchan), np.zeros(nchan))
        for m in parts:
            moments = moments.merge(m)
        tsum = total
    means = moments.mean.copy()
    stds = np.sqrt(moments.m2 / moments.n)
    if UNUSED in ERA5_CHANNELS and nchan == len(ERA5_CHANNELS):
        k = ERA5_CHANNELS.index(UNUSED)
        means[k], stds[k] = 0.0, 1.0  # the zero-filled channel: normalisation leaves it unchanged
    stats = {"global_means.npy": means.reshape(1, nchan, 1, 1).astype(np.float32),
             "global_stds.npy": stds.reshape(1, nchan, 1, 1).astype(np.float32),
             "time_means.npy": (tsum / steps).reshape(1, nchan, rows, cols).astype(np.float32)}
    out = root / "stats"
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in stats.items():
        tmp = out / (name + ".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, out / name)
    _write_json(out / "stats.json", {"split": split, "years": [int(p.stem) for p in files], "steps": int(steps)})
    return stats


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------
def parse_years(text: str) -> list[int]:
    """'1979-2015', '2016,2017' or '2018' -> sorted list of years."""
    years: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError
                years.update(range(a, b + 1))
            elif part:
                years.add(int(part))
    except ValueError:
        raise ConversionError(f"--years {text!r}: use a range like 1979-2015 or a list like 2016,2017") from None
    if not years:
        raise ConversionError("--years is empty")
    return sorted(years)


def parse_grid(text: str) -> tuple[int, int] | None:
    if text == "any":
        return None
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConversionError(f"--grid {text!r}: use ROWSxCOLS (e.g. 721x1440) or 'any'") from None
    return rows, cols


def _world():
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def collective(comm, fn: Callable, *args, **kwargs):
    """Run ``fn`` on every rank; if it fails on any rank, raise the first failure on all ranks."""
    try:
        result, error = fn(*args, **kwargs), None
    except ConversionError as exc:
        result, error = None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure must reach the other ranks, or they wait forever
        log.exception("unexpected failure")
        rank = comm.rank if comm is not None else 0
        result, error = None, f"rank {rank}: {type(exc).__name__}: {exc}"
    if comm is not None and comm.size > 1:
        errors = [e for e in comm.allgather(error) if e]
        error = errors[0] if errors else None
    if error:
        raise ConversionError(error)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert CDS ERA5 netCDF files into the FourCastNet layout "
                                            "(ROOT/SPLIT/YYYY.h5 + ROOT/stats).")
    p.add_argument("--input", action="append", default=[], metavar="DIR_OR_GLOB",
                   help="directory (searched recursively for *.nc) or glob; repeat for several")
    p.add_argument("--output", required=True, metavar="ROOT", help="dataset root (gets SPLIT/, stats/, metadata.json)")
    p.add_argument("--years", help="years to convert: 1979-2015, 2016,2017, ...")
    p.add_argument("--split", default="train",
                   help="sub-folder for these years: train, test or out_of_sample (default train)")
    p.add_argument("--stats-from", metavar="SPLIT", help="afterwards compute stats/ from ROOT/SPLIT (e.g. train)")
    p.add_argument("--stats-years", help="only these years of --stats-from (default: every year file there)")
    p.add_argument("--grid", default="721x1440", help="expected input grid ROWSxCOLS, or 'any' (default 721x1440)")
    p.add_argument("--chunk-steps", type=int, default=4,
                   help="6-hourly steps held in memory at once (4 = 350 MB at 721x1440)")
    p.add_argument("--max-steps", type=int, help="at most this many steps per year (1460 = the published files, "
                                                  "which drop Dec 31 of leap years)")
    p.add_argument("--allow-partial", action="store_true", help="accept years whose data end early")
    p.add_argument("--force", action="store_true", help="redo years that are already marked done")
    return p


def run(args: argparse.Namespace, comm) -> None:
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    root = Path(args.output).expanduser()
    if args.chunk_steps < 1 or (args.max_steps is not None and args.max_steps < 1):
        raise ConversionError("--chunk-steps and --max-steps must be >= 1")
    if args.years is None and args.stats_from is None:
        raise ConversionError("nothing to do: give --years (with --input) and/or --stats-from")
    if args.years is not None:
        if not args.input:
            raise ConversionError("--years needs --input (the CDS netCDF files)")
        years = parse_years(args.years)
        out_dir = root / args.split
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
        todo = [y for y in years if args.force or not is_done(out_dir, y)]
        if rank == 0 and len(todo) < len(years):
            log.info("skipping %d year(s) already done in %s", len(years) - len(todo), out_dir)
        inv = None
        if todo:
            def scan():
                return build_inventory(expand_inputs(args.input), parse_grid(args.grid)) if rank == 0 else None
            inv = collective(comm, scan)
            if comm is not None and size > 1:
                inv = comm.bcast(inv, root=0)
            if rank == 0:
                log.info("%d input files, grid %d x %d; converting %d year(s) on %d rank(s)", inv.files,
                         *inv.grid.shape, len(todo), size)
                write_metadata(root, inv.grid)

        def convert_mine():
            for year in todo[rank::size]:
                t0 = time.perf_counter()
                n = convert_year(inv, year, out_dir, chunk_steps=args.chunk_steps, max_steps=args.max_steps,
                                 allow_partial=args.allow_partial)
                log.info("%s/%04d.h5: %d steps in %.1f s", args.split, year, n, time.perf_counter() - t0)
        collective(comm, convert_mine)
    if args.stats_from is not None:
        stats_years = parse_years(args.stats_years) if args.stats_years else None
        collective(comm, compute_stats, root, args.stats_from, comm, years=stats_years,
                   chunk_steps=max(1, args.chunk_steps))
        if rank == 0:
            log.info("statistics of %s written to %s", args.stats_from, root / "stats")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    comm = _world()
    rank = comm.rank if comm is not None else 0
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(message)s", datefmt="%H:%M:%S")
    try:
        run(args, comm)
    except ConversionError as exc:
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
