"""The CF layout every output format shares: names of files, coordinates, attributes, and the checks on them.

A forecast output (one initial time, one product) has the coordinates ``([realization,] time, lead_time,
lat, lon)`` plus ``valid_time``, one float32 variable per channel and the global attributes below; the
netCDF files and the zarr stores are two encodings of it (docs/output_format.md).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

PRODUCTS = ("mean", "spread", "members")


def products(members: bool) -> tuple[str, ...]:
    """The products a run writes: mean and spread, and every member when asked (``output.members``)."""
    return PRODUCTS if members else PRODUCTS[:2]
CELL_METHODS = {"mean": "realization: mean", "spread": "realization: standard_deviation"}
FILL_VALUE = np.float32(9.969209968386869e36)  # netCDF's default fill value of f4 (netCDF4.default_fillvals)
TIME_UNITS = "hours since 1970-01-01 00:00:00"
CALENDAR = "proleptic_gregorian"
COORDINATE_NAMES = ("realization", "time", "lead_time", "valid_time", "lat", "lon")
_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
_DESCRIPTIONS = {"mean": "ensemble mean", "spread": "ensemble spread (standard deviation)",
                 "members": "ensemble members"}


def output_path(outdir: str | os.PathLike, init_time: np.datetime64, product: str, suffix: str) -> Path:
    """``{outdir}/forecast_{YYYYmmddTHH}_{product}{suffix}``: the output of one initial time and product."""
    check_product(product)
    stamp = np.datetime_as_string(np.datetime64(init_time, "h"), unit="h").replace("-", "")
    return Path(outdir) / f"forecast_{stamp}_{product}{suffix}"


def hours_since_epoch(t: np.datetime64) -> float:
    """A time as hours since 1970-01-01 00:00:00 (``TIME_UNITS``)."""
    return float((np.datetime64(t, "s") - _EPOCH) / np.timedelta64(1, "h"))


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def timestamp() -> str:
    """The current UTC time as ISO 8601 with a Z (``history`` and ``date_created``)."""
    return now().isoformat(timespec="seconds").replace("+00:00", "Z")


def software_versions() -> str:
    """One line naming the versions of Python, torch, numpy, netCDF4 (and its C libraries), mpi4py and MPI."""
    import netCDF4

    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    mpi = "not initialised"
    if "mpi4py.MPI" in sys.modules:  # never initialise MPI just to name it
        mpi = sys.modules["mpi4py.MPI"].Get_library_version().splitlines()[0].strip()
        mpi = " ".join(mpi.split())
    return (f"python {platform.python_version()}; torch {version('torch')}; numpy {np.__version__}; "
            f"netCDF4 {netCDF4.__version__} (netCDF-C {netCDF4.__netcdf4libversion__}, "
            f"HDF5 {netCDF4.__hdf5libversion__}); mpi4py {version('mpi4py')}; MPI {mpi}")


def coordinates(init: np.datetime64, leads: Sequence[int], lat: np.ndarray, lon: np.ndarray,
                n_members: int | None) -> list[tuple[str, np.ndarray, tuple[str, ...], dict]]:
    """(name, values, dimensions, attributes) of each coordinate variable, in the order they are written."""
    t0 = hours_since_epoch(init)
    out = []
    if n_members is not None:
        out.append(("realization", np.arange(n_members, dtype=np.int32), ("realization",),
                    {"standard_name": "realization", "long_name": "ensemble member number"}))
    out += [
        ("time", np.array([t0], np.float64), ("time",),
         {"standard_name": "forecast_reference_time", "long_name": "initial time of the forecast",
          "units": TIME_UNITS, "calendar": CALENDAR}),
        ("lead_time", np.asarray(leads, np.int32), ("lead_time",),
         {"standard_name": "forecast_period", "long_name": "forecast lead time", "units": "hours"}),
        ("valid_time", t0 + np.asarray(leads, np.float64)[None, :], ("time", "lead_time"),
         {"standard_name": "time", "long_name": "valid time of the forecast", "units": TIME_UNITS,
          "calendar": CALENDAR}),
        ("lat", np.asarray(lat, np.float64), ("lat",),
         {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"}),
        ("lon", np.asarray(lon, np.float64), ("lon",),
         {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"}),
    ]
    return out


def data_dimensions(product: str) -> tuple[str, ...]:
    """The dimensions of a data variable of ``product``."""
    return (("realization",) if product == "members" else ()) + ("time", "lead_time", "lat", "lon")


def global_attributes(product: str, init: np.datetime64, filename: str, n_members: int | None) -> dict[str, Any]:
    """The global attributes the writer sets (the run's own, e.g. its config, are added after these)."""
    from .. import __version__
    stamp = timestamp()
    init_text = np.datetime_as_string(np.datetime64(init, "s"), unit="m")
    glob: dict[str, Any] = {
        "Conventions": "CF-1.10",
        "title": f"FourCastNet {_DESCRIPTIONS[product]} forecast from {init_text}",
        "institution": "unknown",
        "source": f"hpc_fcn {__version__}, FourCastNet AFNO",
        "history": f"{stamp} hpc_fcn {__version__}: created {filename}",
        "date_created": stamp,
        "product": product,
        "forecast_reference_time": f"{init_text}Z",
        "software_versions": software_versions(),
    }
    if n_members is not None:
        glob["ensemble_size"] = int(n_members)
    return glob


def variable_attributes(name: str, units: Mapping, standard_names: Mapping, long_names: Mapping,
                        product: str) -> dict:
    """The CF attributes of output variable ``name`` (the same in every format)."""
    va = {"long_name": str(long_names[name])}
    if standard_names.get(name):
        va["standard_name"] = str(standard_names[name])
    va["units"] = str(units[name])
    if product in CELL_METHODS:
        va["cell_methods"] = CELL_METHODS[product]
    va["coordinates"] = "valid_time"
    va["missing_value"] = FILL_VALUE
    return va


# -- checks ------------------------------------------------------------------------------------------

def check_product(product: str) -> None:
    if product not in PRODUCTS:
        raise ValueError(f"product must be one of {', '.join(PRODUCTS)}, got {product!r}")


def check_members(product: str, n_members: int | None) -> None:
    if product == "members" and (n_members is None or n_members < 1):
        raise ValueError(f"the members product needs n_members >= 1, got {n_members}")
    if n_members is not None and n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")


def check_variables(variables: list[str], units: Mapping, long_names: Mapping) -> None:
    if not variables:
        raise ValueError("variables is empty: select at least one channel to write")
    if len(set(variables)) != len(variables):
        raise ValueError(f"variables has duplicates: {variables}")
    for name in variables:
        if name in COORDINATE_NAMES:
            raise ValueError(f"variable name {name!r} clashes with a coordinate of the file")
        if name not in units:
            raise ValueError(f"no units given for variable {name!r}")
        if name not in long_names:
            raise ValueError(f"no long_name given for variable {name!r}")


def check_axis(values, name: str, lo: float, hi: float) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size < 1:
        raise ValueError(f"{name} must be a non-empty 1-d array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or a.min() < lo or a.max() > hi:
        raise ValueError(f"{name} values must be finite and within [{lo}, {hi}]")
    d = np.diff(a)
    if a.size > 1 and not (np.all(d > 0) or np.all(d < 0)):
        raise ValueError(f"{name} must be strictly monotonic")
    return a


def check_leads(lead_hours: Sequence[int]) -> list[int]:
    leads = [int(h) for h in lead_hours]
    if not leads:
        raise ValueError("lead_hours is empty")
    if any(h != float(x) for h, x in zip(leads, lead_hours)):
        raise ValueError(f"lead_hours must be whole hours, got {list(lead_hours)}")
    if leads[0] < 0 or any(b <= a for a, b in zip(leads, leads[1:])):
        raise ValueError(f"lead_hours must be >= 0 and strictly increasing, got {leads}")
    return leads


def checked_layout(product: str, variables: Sequence[str], units: Mapping, long_names: Mapping, lat, lon,
                   lead_hours: Sequence[int], n_members: int | None) -> tuple[list[str], np.ndarray, np.ndarray,
                                                                              list[int]]:
    """Every check of a new output's layout; returns (variables, lat, lon, leads) as written."""
    check_product(product)
    variables = list(variables)
    check_variables(variables, units, long_names)
    lat, lon = check_axis(lat, "lat", -90.0, 90.0), check_axis(lon, "lon", -360.0, 360.0)
    leads = check_leads(lead_hours)
    check_members(product, n_members)
    return variables, lat, lon, leads
