"""ERA5 netCDF files from the Copernicus Climate Data Store (new and old conventions) as converter sources.

Single-level files (u10 v10 t2m sp msl tcwv) and pressure-level files (u v t z r on a ``pressure_level``
(new CDS) or ``level`` (old CDS) axis), time axis ``valid_time`` or ``time``, packed or not, any split into
files; the old CDS ``expver`` axis (ERA5 and ERA5T side by side, one of them masked) is merged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .inventory import ConversionError, Inventory, orient_grid

# names the same field has in CDS netCDF (new and old) and in GRIB-to-netCDF conversions
VAR_ALIASES: dict[str, tuple[str, ...]] = {
    "u10": ("u10", "10u"), "v10": ("v10", "10v"), "t2m": ("t2m", "2t"), "sp": ("sp",), "msl": ("msl",),
    "tcwv": ("tcwv",), "u": ("u",), "v": ("v",), "t": ("t",), "z": ("z",), "r": ("r",),
}
ALIAS_OF = {alias: short for short, names in VAR_ALIASES.items() for alias in names}
TIME_DIMS = ("valid_time", "time")
LEVEL_DIMS = ("pressure_level", "level", "isobaricInhPa", "plev")
LAT_DIMS = ("latitude", "lat")
LON_DIMS = ("longitude", "lon")
EXPVER_DIM = "expver"  # old CDS: ERA5 (1) and preliminary ERA5T (5) side by side; one of them is masked


@dataclass
class NetCDFSource:
    """One field in one netCDF file: a variable (at one level) with its times; reads a time subset."""
    path: str
    var: str  # the variable's name in the file
    dims: tuple[str, ...]
    level_index: int | None
    times: np.ndarray  # datetime64[h], increasing
    flip_lat: bool
    lon_roll: int
    members: tuple[int, ...] = (0,)

    def read(self, tidx: np.ndarray) -> np.ndarray:
        """(len(tidx), 1, rows, cols) float32 at the given (increasing) time indices."""
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
        return np.ascontiguousarray(out)[:, None]


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


def add_netcdf_file(inv: Inventory, path: str) -> bool:
    """Add the channels of one CDS netCDF file to ``inv``; False when it holds no ERA5 variable of interest."""
    import netCDF4
    try:
        nc = netCDF4.Dataset(path)
    except OSError as exc:
        raise ConversionError(f"{path}: not a readable netCDF file ({exc})") from exc
    with nc:
        found = [(name, ALIAS_OF[name]) for name in nc.variables if name in ALIAS_OF]
        if not found:
            return False
        for name, short in found:
            _add_variable(inv, path, nc, name, short)
    return True


def _add_variable(inv: Inventory, path: str, nc, name: str, short: str) -> None:
    var = nc.variables[name]
    dims = tuple(var.dimensions)
    tdim, ldim = _find_dim(dims, TIME_DIMS), _find_dim(dims, LEVEL_DIMS)
    ydim, xdim = _find_dim(dims, LAT_DIMS), _find_dim(dims, LON_DIMS)
    if tdim is None or ydim is None or xdim is None:
        raise ConversionError(f"{path}: variable {name} has dimensions {dims}; expected a time "
                              f"({'/'.join(TIME_DIMS)}), latitude and longitude dimension")
    for d in dims:
        if d not in (tdim, ldim, ydim, xdim, EXPVER_DIM) and len(nc.dimensions[d]) != 1:
            hint = "; convert ensemble members from GRIB" if d == "number" else ""
            raise ConversionError(f"{path}: variable {name} has an unexpected dimension {d} of length "
                                  f"{len(nc.dimensions[d])}{hint}")
    for coord in (tdim, ydim, xdim) + ((ldim,) if ldim else ()):
        if coord not in nc.variables:
            raise ConversionError(f"{path}: no coordinate variable for dimension {coord}")
    times = _decode_times(nc.variables[tdim])
    if np.any(np.diff(times) <= np.timedelta64(0, "h")):
        raise ConversionError(f"{path}: times of {name} are not strictly increasing")
    lat, lon, flip, roll = orient_grid(path, np.asarray(nc.variables[ydim][:], dtype=np.float64),
                                       np.asarray(nc.variables[xdim][:], dtype=np.float64))
    inv.check_grid(path, lat, lon)
    levels: list[tuple[int | None, int | None]]
    if ldim is None:
        levels = [(None, None)]
    else:
        levels = [(int(round(v)), i) for i, v in enumerate(_levels_hpa(nc.variables[ldim]))]
    for lv, li in levels:
        inv.note(short, lv)
        for channel in inv.wants(short, lv):
            inv.add(channel, NetCDFSource(path, name, dims, li, times, flip, roll), path)
