"""ERA5 netCDF files from the Copernicus Climate Data Store (new and old conventions) as converter sources.

Single-level files (u10 v10 t2m sp msl tcwv) and pressure-level files (u v t z r on a ``pressure_level``
(new CDS) or ``level`` (old CDS) axis), time axis ``valid_time`` or ``time``, packed or not, any split into
files; the old CDS ``expver`` axis (ERA5 and ERA5T side by side, one of them masked) is merged. Units are
checked and converted as :mod:`hpc_fcn.data.units` says; times are decoded with cftime, for any CF calendar.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .inventory import ConversionError, Inventory, orient_grid
from .units import Conversion, to_channel_units

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
    units: Conversion = Conversion()  # to the channel's units

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
        out = self.units.apply(values)
        if self.flip_lat:
            out = out[:, ::-1, :]
        if self.lon_roll:
            out = np.roll(out, self.lon_roll, axis=-1)
        if not np.all(np.isfinite(out)):
            raise ConversionError(f"{self.path}: variable {self.var} has NaN/Inf values")
        return np.ascontiguousarray(out)[:, None]


_OPEN: dict = {}  # path -> open netCDF4.Dataset, so a year's many small reads do not reopen files
MAX_OPEN = 32  # each holds ~1 MB of HDF5 buffers, not all returned on closing: bounds memory whatever the period


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


REAL_CALENDARS = ("standard", "gregorian", "proleptic_gregorian", "julian")  # dates of the real world


def _decode_times(path: str, var) -> np.ndarray:
    """A CF time coordinate, any calendar and epoch cftime decodes, as datetime64[h]; one-line errors.

    Dates of the real-world calendars are converted to the proleptic Gregorian calendar of numpy; a model
    calendar's dates (noleap, 360_day, ...) are taken as written and refused where no such date exists.
    """
    import cftime
    units = getattr(var, "units", None)
    calendar = str(getattr(var, "calendar", "standard")).strip().lower()
    if units is None:
        raise ConversionError(f"{path}: time variable {var.name} has no 'units' attribute (e.g. 'hours since "
                              "1900-01-01'): add it")
    values = np.ma.getdata(var[:]).ravel()
    try:
        dates = cftime.num2date(values, units, calendar=calendar, only_use_cftime_datetimes=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConversionError(f"{path}: time variable {var.name} (units '{units}', calendar '{calendar}') cannot "
                              f"be decoded ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    out = np.empty(len(values), dtype="datetime64[us]")
    for i, d in enumerate(np.atleast_1d(dates)):
        if calendar in REAL_CALENDARS:
            d = d.change_calendar("proleptic_gregorian", has_year_zero=True)
        try:
            out[i] = np.datetime64(f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:"
                                   f"{d.second:02d}.{d.microsecond:06d}")
        except ValueError:
            raise ConversionError(f"{path}: time variable {var.name}: {d} of the {calendar} calendar is no date of "
                                  "the standard calendar; give the data on standard-calendar dates") from None
    t = (out + np.timedelta64(500, "ms")).astype("datetime64[s]")  # to the second: float round-off
    h = t.astype("datetime64[h]")
    if np.any(h != t):
        raise ConversionError(f"{path}: time variable {var.name} has values that are not on whole hours "
                              f"(first {t[np.argmax(h != t)]})")
    return h


def _levels_hpa(var) -> np.ndarray:
    """Pressure levels in hPa: by their units where UDUNITS knows them as a pressure, else Pa above 1100."""
    import cf_units
    values = np.asarray(var[:], dtype=np.float64)
    units = str(getattr(var, "units", "")).strip()
    try:
        unit = cf_units.Unit(units) if units else None
    except ValueError:
        unit = None
    if unit is not None and unit.is_convertible("hPa"):
        return np.asarray(unit.convert(values, "hPa"), dtype=np.float64)
    return values / 100.0 if values.max() > 1100.0 else values


def netcdf_name(short: str) -> str:
    """How the missing-channel message names ERA5 field ``short`` in netCDF input."""
    return f"variable {short}"


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
        inv.namers["netCDF"] = netcdf_name
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
    times = _decode_times(path, nc.variables[tdim])
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
    units = None
    for lv, li in levels:
        inv.note(short, lv)
        for channel in inv.wants(short, lv):
            if units is None:
                units = to_channel_units(path, name, short, getattr(var, "units", None),
                                         getattr(var, "standard_name", None))
                inv.tell(units.note, path)
            inv.add(channel, NetCDFSource(path, name, dims, li, times, flip, roll, units=units), path)
