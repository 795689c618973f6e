"""Streaming CF-1.10 netCDF4 files of ensemble forecasts: one file per initial time and product.

A file holds one initial time (dimension ``time``, the forecast reference time), every output lead
(``lead_time``, hours) and the lat/lon grid; the ``members`` product adds ``realization``. Values are
written window by window as the rollout streams. Work goes to ``<path>.partial``, which is renamed to
``path`` once every lead has been written, so a file under its final name is always complete.
One process writes each file; the other ranks send it their windows with :func:`gather_window_to_root`
(the installed netCDF4 has no parallel IO, and one writer per file keeps the files simple and robust).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import netCDF4
import numpy as np

PRODUCTS = ("mean", "spread", "members")
CELL_METHODS = {"mean": "realization: mean", "spread": "realization: standard_deviation"}
FILL_VALUE = np.float32(netCDF4.default_fillvals["f4"])
TIME_UNITS = "hours since 1970-01-01 00:00:00"
CALENDAR = "proleptic_gregorian"
PARTIAL_SUFFIX = ".partial"
COORDINATE_NAMES = ("realization", "time", "lead_time", "valid_time", "lat", "lon")
_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
_RESERVED_ATTRS = ("Conventions", "product", "leads_complete")


def forecast_path(outdir: str | os.PathLike, init_time: np.datetime64, product: str) -> Path:
    """``{outdir}/forecast_{YYYYmmddTHH}_{product}.nc``: where the file of one initial time and product goes."""
    _check_product(product)
    stamp = np.datetime_as_string(np.datetime64(init_time, "h"), unit="h").replace("-", "")
    return Path(outdir) / f"forecast_{stamp}_{product}.nc"


def partial_path(path: str | os.PathLike) -> Path:
    """Where an unfinished file lives until its last lead is written."""
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def hours_since_epoch(t: np.datetime64) -> float:
    """A time as hours since 1970-01-01 00:00:00 (the files' ``TIME_UNITS``)."""
    return float((np.datetime64(t, "s") - _EPOCH) / np.timedelta64(1, "h"))


def software_versions() -> str:
    """One line naming the versions of Python, torch, numpy, netCDF4 (and its C libraries), mpi4py and MPI."""
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


class ForecastWriter:
    """Writes one CF-1.10 file (one initial time, one product) window by window; see docs/output_format.md.

    Windows of a lead may arrive in any order but must not overlap; a lead is complete once its
    windows cover every member, row and column. ``flush()`` makes everything written so far durable.
    """

    def __init__(self, path: str | os.PathLike, *, variables: Sequence[str], units: Mapping[str, str],
                 standard_names: Mapping[str, str | None], long_names: Mapping[str, str],
                 lat: np.ndarray, lon: np.ndarray, init_time: np.datetime64, lead_hours: Sequence[int],
                 product: str, n_members: int | None = None, attrs: Mapping[str, Any] | None = None,
                 complevel: int = 2):
        _check_product(product)
        variables = list(variables)
        _check_variables(variables, units, long_names)
        lat, lon = _check_axis(lat, "lat", -90.0, 90.0), _check_axis(lon, "lon", -360.0, 360.0)
        leads = _check_leads(lead_hours)
        if product == "members" and (n_members is None or n_members < 1):
            raise ValueError(f"the members product needs n_members >= 1, got {n_members}")
        if n_members is not None and n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        if not 1 <= complevel <= 9:
            raise ValueError(f"complevel must be in 1..9, got {complevel}")
        init = np.datetime64(init_time, "s")
        extra = {k: _attr_value(k, v) for k, v in (attrs or {}).items()}
        for k in _RESERVED_ATTRS:
            if k in extra:
                raise ValueError(f"global attribute {k!r} is set by the writer and cannot be passed in attrs")

        self.path = Path(path)
        self.partial_path = partial_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ds = netCDF4.Dataset(self.partial_path, "w", format="NETCDF4")
        try:
            _define(ds, variables=variables, units=units, standard_names=standard_names, long_names=long_names,
                    lat=lat, lon=lon, init=init, leads=leads, product=product, n_members=n_members,
                    complevel=complevel, attrs=extra, filename=self.path.name)
        except BaseException:
            ds.close()
            raise
        self._attach(ds, leads_complete=0)
        self.flush()

    @classmethod
    def open_existing(cls, path: str | os.PathLike, *, resume_at: int | None = None) -> "ForecastWriter":
        """Reopen the file of ``path`` (its ``.partial`` if there is one) to continue writing at lead ``resume_at``.

        ``resume_at`` defaults to the file's count of complete leads and may not exceed it; leads from
        ``resume_at`` on are treated as unwritten and must be written again.
        """
        final, part = Path(path), partial_path(path)
        if not part.exists() and not final.exists():
            raise FileNotFoundError(f"no forecast file to resume at {final} or {part}")
        if not part.exists():
            if resume_at is None or resume_at >= _leads_in(final):
                return cls._open(final, part, resume_at, from_partial=False)
            os.replace(final, part)  # reopening a finished file for rewriting: it is partial again
        return cls._open(final, part, resume_at, from_partial=True)

    @classmethod
    def _open(cls, final: Path, part: Path, resume_at: int | None, from_partial: bool) -> "ForecastWriter":
        src = part if from_partial else final
        try:
            ds = netCDF4.Dataset(src, "a")
        except OSError as exc:
            raise OSError(f"cannot reopen {src} to resume ({exc}); delete it and start this initial time again") from exc
        if "product" not in ds.ncattrs() or ds.getncattr("product") not in PRODUCTS:
            ds.close()
            raise ValueError(f"{src} is not a forecast file written by hpc_fcn (no 'product' attribute)")
        done = int(ds.getncattr("leads_complete"))
        if resume_at is None:
            resume_at = done
        if not 0 <= resume_at <= done:
            ds.close()
            raise ValueError(f"cannot resume {src} at lead {resume_at}: it has {done} complete leads")
        self = cls.__new__(cls)
        self.path, self.partial_path = final, part
        self._attach(ds, leads_complete=resume_at)
        if from_partial:
            stamp = _now().isoformat(timespec="seconds").replace("+00:00", "Z")
            history = ds.getncattr("history") if "history" in ds.ncattrs() else ""
            ds.setncattr("history", f"{history}\n{stamp} hpc_fcn: resumed at lead index {resume_at}".lstrip())
            self.flush()
        return self

    def _attach(self, ds: netCDF4.Dataset, leads_complete: int) -> None:
        """Bookkeeping shared by a new and a reopened file."""
        self._ds = ds
        self.product = ds.getncattr("product")
        self.variables = [n for n, v in ds.variables.items() if n not in COORDINATE_NAMES]
        self.n_leads = len(ds.dimensions["lead_time"])
        self.n_lat, self.n_lon = len(ds.dimensions["lat"]), len(ds.dimensions["lon"])
        self.n_members = len(ds.dimensions["realization"]) if self.product == "members" else None
        self._plane = (self.n_members or 1) * self.n_lat * self.n_lon
        self._done = [i < leads_complete for i in range(self.n_leads)]
        self._boxes: dict[int, list[tuple[int, ...]]] = {}
        self._written: dict[int, int] = {}

    # -- writing ---------------------------------------------------------------------------------

    def write(self, lead_index: int, data, *, rows: slice | None = None, cols: slice | None = None,
              members: slice | None = None) -> None:
        """Write ``data`` (C, r, c), or (m, C, r, c) for the members product, into a window of lead ``lead_index``."""
        self._check_open()
        if not 0 <= lead_index < self.n_leads:
            raise IndexError(f"lead index {lead_index} is outside 0..{self.n_leads - 1}")
        if self._done[lead_index]:
            raise ValueError(f"lead index {lead_index} of {self.path.name} is already complete")
        data = np.asarray(data, dtype=np.float32)
        r0, r1 = _window(rows, self.n_lat, "rows")
        c0, c1 = _window(cols, self.n_lon, "cols")
        C = len(self.variables)
        if self.product == "members":
            m0, m1 = _window(members, self.n_members, "members")
            want = (m1 - m0, C, r1 - r0, c1 - c0)
        else:
            if members is not None:
                raise ValueError(f"members= only applies to the members product, not {self.product!r}")
            m0, m1 = 0, 1
            want = (C, r1 - r0, c1 - c0)
        if data.shape != want:
            raise ValueError(f"data of shape {data.shape} does not fit the window: expected {want} "
                             f"({'members, ' if len(want) == 4 else ''}channels, rows, cols)")
        box = (m0, m1, r0, r1, c0, c1)
        for other in self._boxes.get(lead_index, []):
            if _overlaps(box, other):
                raise ValueError(f"window members[{m0}:{m1}] rows[{r0}:{r1}] cols[{c0}:{c1}] overlaps one "
                                 f"already written for lead index {lead_index}")
        for i, name in enumerate(self.variables):
            var = self._ds.variables[name]
            if self.product == "members":
                var[m0:m1, 0, lead_index, r0:r1, c0:c1] = data[:, i]
            else:
                var[0, lead_index, r0:r1, c0:c1] = data[i]
        self._boxes.setdefault(lead_index, []).append(box)
        self._written[lead_index] = self._written.get(lead_index, 0) + (m1 - m0) * (r1 - r0) * (c1 - c0)
        if self._written[lead_index] == self._plane:
            self._done[lead_index] = True
            del self._boxes[lead_index], self._written[lead_index]

    @property
    def leads_complete(self) -> int:
        """How many leads, counted from the first, are completely written."""
        n = 0
        while n < self.n_leads and self._done[n]:
            n += 1
        return n

    @property
    def complete(self) -> bool:
        return all(self._done)

    def flush(self) -> None:
        """Make everything written so far durable on disk (netCDF sync, then fsync)."""
        self._check_open()
        self._ds.setncattr("leads_complete", np.int32(self.leads_complete))
        self._ds.sync()
        _fsync(self._ds.filepath())

    def close(self) -> None:
        """Flush and close; a file whose every lead is written gets its final name."""
        if self._ds is None:
            return
        self.flush()
        src = Path(self._ds.filepath())
        self._ds.close()
        self._ds = None
        if self.complete and src != self.path:
            os.replace(src, self.path)
            _fsync(self.path.parent)

    def abandon(self) -> None:
        """Close after a failure without writing anything more (no flush, no rename): the file stays as last flushed."""
        if self._ds is None:
            return
        ds, self._ds = self._ds, None
        ds.close()

    def __enter__(self) -> "ForecastWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._ds is None:
            raise ValueError(f"{self.path.name} is closed")


# -- gathering windows to the writer ---------------------------------------------------------------

def gather_window_to_root(comm, data, full_shape: Sequence[int], *, rows: slice | None = None,
                          cols: slice | None = None, members: slice | None = None, root: int = 0):
    """Assemble the windows held by the ranks of ``comm`` into one float32 array on ``root`` (None elsewhere).

    Collective over ``comm`` (a :class:`hpc_fcn.parallel.comm.Communicator`). ``data`` covers ``rows`` x
    ``cols`` of the last two axes of ``full_shape`` and, when given, ``members`` of its first axis; a rank
    holding a copy of data that another rank sends passes ``data=None``. The windows must tile
    ``full_shape`` exactly (checked; every rank raises alike).
    """
    full_shape = tuple(int(n) for n in full_shape)
    if len(full_shape) < 2:
        raise ValueError(f"full_shape must have at least two axes (rows, cols), got {full_shape}")
    meta = None
    if data is not None:
        data = np.ascontiguousarray(data, dtype=np.float32)
        box = [(0, n) for n in full_shape]
        box[-2] = _window(rows, full_shape[-2], "rows")
        box[-1] = _window(cols, full_shape[-1], "cols")
        if members is not None:
            if len(full_shape) < 3:
                raise ValueError("members= needs a full_shape with a leading members axis")
            box[0] = _window(members, full_shape[0], "members")
        want = tuple(b - a for a, b in box)
        if data.shape != want:
            raise ValueError(f"rank {comm.rank}: data of shape {data.shape} does not fit its window {want}")
        meta = tuple(box)
    metas = comm.gather(meta, root=root, tag="write")
    error = _check_tiling(metas, full_shape) if comm.rank == root else None
    error = comm.bcast(error, root=root, tag="write")
    if error:
        raise ValueError(f"gather_window_to_root: {error}")
    pieces = comm.gatherv_to_root(data if data is not None else np.empty(0, np.float32), root=root, tag="write")
    if pieces is None:
        return None
    out = np.empty(full_shape, np.float32)
    for m, piece in zip(metas, pieces):
        if m is not None:
            out[tuple(slice(a, b) for a, b in m)] = piece
    return out


def _check_tiling(metas: list, full_shape: tuple[int, ...]) -> str | None:
    """None when the boxes are disjoint and cover the full shape, else the reason."""
    boxes = [(r, m) for r, m in enumerate(metas) if m is not None]
    for i, (ri, a) in enumerate(boxes):
        for rj, b in boxes[i + 1:]:
            if all(lo1 < hi2 and lo2 < hi1 for (lo1, hi1), (lo2, hi2) in zip(a, b)):
                return f"the windows of ranks {ri} and {rj} overlap"
    covered = sum(int(np.prod([hi - lo for lo, hi in m])) for _, m in boxes)
    total = int(np.prod(full_shape))
    if covered != total:
        return f"the windows cover {covered} of the {total} points of {full_shape}"
    return None


# -- file layout -----------------------------------------------------------------------------------

def _define(ds: netCDF4.Dataset, *, variables, units, standard_names, long_names, lat, lon, init, leads,
            product, n_members, complevel, attrs, filename) -> None:
    """Dimensions, coordinates, data variables and global attributes of a new file."""
    members = product == "members"
    if members:
        ds.createDimension("realization", n_members)
    ds.createDimension("time", 1)
    ds.createDimension("lead_time", len(leads))
    ds.createDimension("lat", len(lat))
    ds.createDimension("lon", len(lon))

    if members:
        v = ds.createVariable("realization", "i4", ("realization",))
        v.setncatts({"standard_name": "realization", "long_name": "ensemble member number"})
        v[:] = np.arange(n_members, dtype=np.int32)
    t0 = hours_since_epoch(init)
    v = ds.createVariable("time", "f8", ("time",))
    v.setncatts({"standard_name": "forecast_reference_time", "long_name": "initial time of the forecast",
                 "units": TIME_UNITS, "calendar": CALENDAR})
    v[:] = [t0]
    v = ds.createVariable("lead_time", "i4", ("lead_time",))
    v.setncatts({"standard_name": "forecast_period", "long_name": "forecast lead time", "units": "hours"})
    v[:] = np.asarray(leads, dtype=np.int32)
    v = ds.createVariable("valid_time", "f8", ("time", "lead_time"))
    v.setncatts({"standard_name": "time", "long_name": "valid time of the forecast", "units": TIME_UNITS,
                 "calendar": CALENDAR})
    v[:] = t0 + np.asarray(leads, dtype=np.float64)[None, :]
    v = ds.createVariable("lat", "f8", ("lat",))
    v.setncatts({"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"})
    v[:] = lat
    v = ds.createVariable("lon", "f8", ("lon",))
    v.setncatts({"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"})
    v[:] = lon

    dims = (("realization",) if members else ()) + ("time", "lead_time", "lat", "lon")
    chunks = (1,) * (len(dims) - 2) + (len(lat), len(lon))
    for name in variables:
        v = ds.createVariable(name, "f4", dims, zlib=True, complevel=complevel, shuffle=True,
                              chunksizes=chunks, fill_value=FILL_VALUE)
        v.setncatts(variable_attributes(name, units, standard_names, long_names, product))

    stamp = _now().isoformat(timespec="seconds").replace("+00:00", "Z")
    from .. import __version__
    what = {"mean": "ensemble mean", "spread": "ensemble spread (standard deviation)",
            "members": "ensemble members"}[product]
    init_text = np.datetime_as_string(init, unit="m")
    glob: dict[str, Any] = {
        "Conventions": "CF-1.10",
        "title": f"FourCastNet {what} forecast from {init_text}",
        "institution": "unknown",
        "source": f"hpc_fcn {__version__}, FourCastNet AFNO",
        "history": f"{stamp} hpc_fcn {__version__}: created {filename}",
        "date_created": stamp,
        "product": product,
        "forecast_reference_time": f"{init_text}Z",
        "software_versions": software_versions(),
    }
    if n_members is not None:
        glob["ensemble_size"] = np.int32(n_members)
    glob.update(attrs)
    glob["leads_complete"] = np.int32(0)
    ds.setncatts(glob)


# -- checks and small helpers ----------------------------------------------------------------------

def variable_attributes(name: str, units: Mapping, standard_names: Mapping, long_names: Mapping,
                        product: str) -> dict:
    """The CF attributes of output variable ``name`` (the same in the netCDF files and the zarr stores)."""
    va = {"long_name": str(long_names[name])}
    if standard_names.get(name):
        va["standard_name"] = str(standard_names[name])
    va["units"] = str(units[name])
    if product in CELL_METHODS:
        va["cell_methods"] = CELL_METHODS[product]
    va["coordinates"] = "valid_time"
    va["missing_value"] = FILL_VALUE
    return va


def _check_product(product: str) -> None:
    if product not in PRODUCTS:
        raise ValueError(f"product must be one of {', '.join(PRODUCTS)}, got {product!r}")


def _check_variables(variables: list[str], units: Mapping, long_names: Mapping) -> None:
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


def _check_axis(values, name: str, lo: float, hi: float) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size < 1:
        raise ValueError(f"{name} must be a non-empty 1-d array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or a.min() < lo or a.max() > hi:
        raise ValueError(f"{name} values must be finite and within [{lo}, {hi}]")
    d = np.diff(a)
    if a.size > 1 and not (np.all(d > 0) or np.all(d < 0)):
        raise ValueError(f"{name} must be strictly monotonic")
    return a


def _check_leads(lead_hours: Sequence[int]) -> list[int]:
    leads = [int(h) for h in lead_hours]
    if not leads:
        raise ValueError("lead_hours is empty")
    if any(h != float(x) for h, x in zip(leads, lead_hours)):
        raise ValueError(f"lead_hours must be whole hours, got {list(lead_hours)}")
    if leads[0] < 0 or any(b <= a for a, b in zip(leads, leads[1:])):
        raise ValueError(f"lead_hours must be >= 0 and strictly increasing, got {leads}")
    return leads


def _window(s: slice | None, n: int, what: str) -> tuple[int, int]:
    """[start, stop) of a contiguous, non-empty window of an axis of size n."""
    if s is None:
        return 0, n
    if not isinstance(s, slice):
        raise TypeError(f"{what} must be a slice, got {type(s).__name__}")
    start, stop, step = s.indices(n)
    if step != 1:
        raise ValueError(f"{what} must be a contiguous slice (step 1), got {s}")
    if stop <= start:
        raise ValueError(f"{what} window {s} is empty for an axis of size {n}")
    return start, stop


def _overlaps(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(a[i] < b[i + 1] and b[i] < a[i + 1] for i in range(0, len(a), 2))


def _attr_value(key: str, value: Any):
    """A value netCDF can store as an attribute (strings, numbers, 1-d numeric arrays; bools as 'true'/'false')."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        a = np.asarray(value)
        if a.ndim == 1 and a.size and a.dtype.kind in "iuf":
            return a
    raise TypeError(f"global attribute {key!r}: cannot store {type(value).__name__} {value!r} in netCDF; "
                    f"pass a string, a number or a list of numbers")


def _leads_in(path: Path) -> int:
    with netCDF4.Dataset(path) as ds:
        return len(ds.dimensions["lead_time"])


def _fsync(path: str | os.PathLike) -> None:
    """fsync a file or directory by path (the netCDF library does not expose its descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
