"""The CF layout every output format shares: names of files, coordinates, attributes, and the checks on them.

A forecast output (one initial time, one product) has the coordinates ``([realization,] time, lead_time,
lat, lon)`` plus ``valid_time`` (and, for a statistic over the members, a scalar ``realization``), one float32
variable per channel and the global attributes below; the netCDF files and the zarr stores are two encodings of
it (docs/output_format.md), which pass CF-1.10's checker but for the dimension-order warnings this layout forces.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass
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
STATISTIC_REALIZATION = -1  # the scalar realization of a statistic over the members: no single member
COORDINATE_NAMES = ("realization", "lag", "time", "lead_time", "valid_time", "lat", "lon")
_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
_DESCRIPTIONS = {"mean": "ensemble mean", "spread": "ensemble spread (standard deviation)",
                 "members": "ensemble members", "probability": "threshold probability",
                 "quantile": "ensemble quantile"}


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
                n_members: int | None, member_lags: Sequence[int] | None = None, statistic: bool = False
                ) -> list[tuple[str, np.ndarray, tuple[str, ...], dict]]:
    """(name, values, dimensions, attributes) of each coordinate variable, in the order they are written.
    ``member_lags``: a lagged ensemble's hours from each member's own initial time to ``init`` (a ``lag``
    auxiliary coordinate on ``realization``). ``statistic``: the variables are statistics over the members
    (:func:`is_statistic`): a scalar ``realization`` coordinate, which their ``cell_methods`` name (CF 7.3)."""
    t0 = hours_since_epoch(init)
    out = []
    if n_members is not None:
        out.append(("realization", np.arange(n_members, dtype=np.int32), ("realization",),
                    {"standard_name": "realization", "long_name": "ensemble member number", "units": "1"}))
        if member_lags is not None:
            out.append(("lag", np.asarray(member_lags, np.int32), ("realization",),
                        {"long_name": "hours the member's own initial time lies before forecast_reference_time "
                                      "(its own lead is lead_time + lag)", "units": "hours"}))
    if statistic:
        out.append(("realization", np.array(STATISTIC_REALIZATION, np.int32), (),
                    {"standard_name": "realization", "long_name": "every ensemble member (a statistic over them)",
                     "units": "1", "comment": f"{STATISTIC_REALIZATION} is no single member: the values are "
                                              "taken over every realization (ensemble_size of them)"}))
    out += [
        # standard_name time, not forecast_reference_time: CF checkers require it of a dimension named time,
        # which Earth2Studio's layout gives the initial time (docs/output_format.md)
        ("time", np.array([t0], np.float64), ("time",),
         {"standard_name": "time", "long_name": "forecast reference time (initial time of the forecast)",
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


def is_statistic(product: str) -> bool:
    """Whether ``product``'s values are statistics over the members (every product but the members')."""
    return product != "members"


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
                        product: str, lagged: bool = False) -> dict:
    """The CF attributes of output variable ``name`` (the same in every format)."""
    va = {"long_name": str(long_names[name])}
    if standard_names.get(name):
        va["standard_name"] = str(standard_names[name])
    va["units"] = str(units[name])
    if product in CELL_METHODS:
        va["cell_methods"] = CELL_METHODS[product]
    va["coordinates"] = "valid_time lag" if lagged and product == "members" else "valid_time"
    if is_statistic(product):
        va["coordinates"] += " realization"
    va["missing_value"] = FILL_VALUE
    return va


# -- checks ------------------------------------------------------------------------------------------

def check_product(product: str) -> None:
    if product not in PRODUCTS and product not in DERIVED_PRODUCTS:
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


# -- derived products: each variable with a leading axis of its own (thresholds, quantile levels) -------------
DERIVED_PRODUCTS = ("probability", "quantile")  # written when the config's ``products`` section asks for them


@dataclass(frozen=True)
class LeadingAxis:
    """A variable's leading dimension and its coordinate variable (e.g. the thresholds of a probability)."""
    dim: str
    values: np.ndarray
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class DerivedLayout:
    """The variables of a derived product: each (axis, time, lead_time, lat, lon) with its own leading axis;
    a lead's data is (sum of the axes' lengths, lat, lon), the variables' rows one after the other."""
    variables: Sequence[str]
    units: Mapping[str, str]
    standard_names: Mapping[str, str | None]
    long_names: Mapping[str, str]
    axes: Mapping[str, LeadingAxis]  # variable -> its leading axis
    attrs: Mapping[str, Mapping[str, Any]]  # variable -> attributes beside variable_attributes'

    @property
    def rows(self) -> int:
        """The leading length of a lead's data: every variable's axis one after the other."""
        return sum(len(self.axes[v].values) for v in self.variables)
