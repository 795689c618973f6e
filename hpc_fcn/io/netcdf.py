"""Streaming CF-1.10 netCDF4 files of ensemble forecasts: one file per initial time and product.

A file holds one initial time (dimension ``time``, the forecast reference time), every output lead
(``lead_time``, hours) and the lat/lon grid; the ``members`` product adds ``realization``. Values are
written window by window as the rollout streams. Work goes to ``<path>.partial``, which is renamed to
``path`` once every lead has been written, so a file under its final name is always complete.
One process writes each file; the other ranks send it their windows
(:func:`hpc_fcn.parallel.windows.gather_window_to_root`): the installed netCDF4 has no parallel IO, and one
writer per file keeps the files simple and robust. :class:`NetCDFOutput` is the run's output backend in this
format (:mod:`.backend`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import netCDF4
import numpy as np

from ..parallel.windows import gather_window_to_root, window_bounds
from ..runtime import first_line
from . import cf
from .backend import DamagedOutput, OutputBackend
from .outdir import check_space, write_failure

PARTIAL_SUFFIX = ".partial"
MARGIN = 1 << 20  # bytes kept free beyond a lead's estimate (netCDF/HDF5 metadata)
# HDF5's chunk cache per variable: the library default (64 MB) kept every written plane of every variable resident
# on the writing rank (330 MB for 20 variables x 4 planes at 721 x 1440); smaller than a plane, a whole-plane
# write goes straight to the file (as fast), and a window write is a read-modify-write of its chunk
CHUNK_CACHE_BYTES, CHUNK_CACHE_SLOTS = 1 << 20, 61
_RESERVED_ATTRS = ("Conventions", "product", "leads_complete")


def forecast_path(outdir: str | os.PathLike, init_time: np.datetime64, product: str) -> Path:
    """``{outdir}/forecast_{YYYYmmddTHH}_{product}.nc``: where the file of one initial time and product goes."""
    return cf.output_path(outdir, init_time, product, ".nc")


def partial_path(path: str | os.PathLike) -> Path:
    """Where an unfinished file lives until its last lead is written."""
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


class ForecastWriter:
    """Writes one CF-1.10 file (one initial time, one product) window by window; see docs/output_format.md.

    Windows of a lead may arrive in any order but must not overlap; a lead is complete once its
    windows cover every member, row and column. ``flush()`` makes everything written so far durable.
    """

    def __init__(self, path: str | os.PathLike, *, variables: Sequence[str], units: Mapping[str, str],
                 standard_names: Mapping[str, str | None], long_names: Mapping[str, str],
                 lat: np.ndarray, lon: np.ndarray, init_time: np.datetime64, lead_hours: Sequence[int],
                 product: str, n_members: int | None = None, attrs: Mapping[str, Any] | None = None,
                 complevel: int = 2, member_lags: Sequence[int] | None = None,
                 leading: Mapping[str, cf.LeadingAxis] | None = None,
                 extra_attrs: Mapping[str, Mapping[str, Any]] | None = None):
        variables, lat, lon, leads = cf.checked_layout(product, variables, units, long_names, lat, lon,
                                                       lead_hours, n_members)
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
                    complevel=complevel, attrs=extra, filename=self.path.name, member_lags=member_lags,
                    leading=leading, extra_attrs=extra_attrs)
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
            raise DamagedOutput(src, f"cannot be reopened: {first_line(exc, 120)}") from exc
        if "product" not in ds.ncattrs() or ds.getncattr("product") not in cf.PRODUCTS + cf.DERIVED_PRODUCTS:
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
            history = ds.getncattr("history") if "history" in ds.ncattrs() else ""
            ds.setncattr("history", f"{history}\n{cf.timestamp()} hpc_fcn: resumed at lead index {resume_at}".lstrip())
            self.flush()
        return self

    def _attach(self, ds: netCDF4.Dataset, leads_complete: int) -> None:
        """Bookkeeping shared by a new and a reopened file."""
        self._ds = ds
        self.product = ds.getncattr("product")
        self.variables = [n for n, v in ds.variables.items()
                          if n not in cf.COORDINATE_NAMES and v.dimensions[-2:] == ("lat", "lon")]
        for name in self.variables:  # a chunk is one plane, written once: HDF5's cache would only hold it
            ds.variables[name].set_var_chunk_cache(size=CHUNK_CACHE_BYTES, nelems=CHUNK_CACHE_SLOTS, preemption=1.0)
        # a derived product's variables: their rows [start, stop) in a lead's data (each has a leading axis)
        self._rows = None
        if self.product in cf.DERIVED_PRODUCTS:
            sizes = [len(ds.dimensions[ds.variables[n].dimensions[0]]) for n in self.variables]
            ends = np.cumsum([0] + sizes)
            self._rows = [(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]
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
        r0, r1 = window_bounds(rows, self.n_lat, "rows")
        c0, c1 = window_bounds(cols, self.n_lon, "cols")
        C = len(self.variables)
        if self.product == "members":
            m0, m1 = window_bounds(members, self.n_members, "members")
            want = (m1 - m0, C, r1 - r0, c1 - c0)
        else:
            if members is not None:
                raise ValueError(f"members= only applies to the members product, not {self.product!r}")
            m0, m1 = 0, 1
            want = (self._rows[-1][1] if self._rows else C, r1 - r0, c1 - c0)
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
            elif self._rows:
                a, b = self._rows[i]
                var[:, 0, lead_index, r0:r1, c0:c1] = data[a:b]
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


# -- the run's outputs in netCDF ------------------------------------------------------------------

class NetCDFOutput(OutputBackend):
    """netCDF: every window is gathered to world rank 0, which writes one file per product and flushes it at
    every lead (so settling has nothing left to do)."""

    def __init__(self, spec, window, writer=None, buffers=None):
        super().__init__(spec, window, writer, buffers)
        self.files: dict[str, ForecastWriter] = {}

    def open(self, init_time, resume_at):
        self.files = {}
        if self.window.world.rank != 0:
            return
        for p in self.spec.products:
            path = forecast_path(self.spec.outdir, init_time, p)
            if resume_at is not None:
                self.files[p] = ForecastWriter.open_existing(path, resume_at=resume_at)
                continue
            try:
                check_space(path.parent, self.spec.lead_bytes(p) + MARGIN, str(partial_path(path)))
                self.files[p] = ForecastWriter(path, init_time=init_time, attrs=self.spec.attrs,
                                               **self.spec.describe(p))
            except (OSError, RuntimeError) as exc:
                self.abandon()
                raise write_failure(partial_path(path), exc) from None

    def write(self, lead, statistics, members, agreed=False):
        spec, w = self.spec, self.window
        host = members.numpy() if members is not None else None
        full2 = (len(w.channels), len(spec.lat), len(spec.lon))
        with w.tracer.region("io.write", "io"):
            for name, f in self.files.items():  # before touching a file, so a full disk leaves it as last flushed
                check_space(f.partial_path.parent, spec.lead_bytes(name) + MARGIN, f"lead {lead} of {f.partial_path}")
            if w.writes_statistics:
                for name, t in statistics.items():
                    full = gather_window_to_root(w.spatial, t.cpu().numpy(), full2, rows=w.rows, cols=w.cols)
                    if full is not None:
                        _put(self.files[name], "write", lead, full)
            if "members" in spec.products and w.writes_members:
                mine = w.members
                for m in range(spec.n_members):  # one member at a time bounds the writer's memory to one field
                    own = host[m - mine.start, w.channels][None] if m in mine else None
                    full = gather_window_to_root(w.member_ranks, own, (1,) + full2, rows=w.rows, cols=w.cols)
                    if full is not None:
                        _put(self.files["members"], "write", lead, full, members=slice(m, m + 1))
            for f in self.files.values():
                _put(f, "flush")

    def write_blocks(self, lead, fields):
        spec, w = self.spec, self.window
        with w.tracer.region("io.write", "io"):
            for name, data in fields.items():
                have = w.block_rows is not None and w.block_rows.stop > w.block_rows.start
                full = gather_window_to_root(w.member_ranks, data if have else None,
                                             (spec.derived[name].rows, len(spec.lat), len(spec.lon)),
                                             rows=w.block_rows if have else None, cols=w.cols)
                if full is not None:
                    f = self.files[name]
                    check_space(f.partial_path.parent, spec.lead_bytes(name) + MARGIN,
                                f"lead {lead} of {f.partial_path}")
                    _put(f, "write", lead, full)
                    _put(f, "flush")

    def close(self, leads_complete):
        if leads_complete is None:  # an error path: the files stay as last flushed
            self.abandon()
            return
        for f in self.files.values():
            try:
                f.close()  # a complete file gets its final name
            except (OSError, RuntimeError) as exc:
                self.abandon()
                raise write_failure(f.partial_path, exc) from None

    def abandon(self):
        """Close the files as they were last flushed, keeping the first error."""
        for f in self.files.values():
            try:
                f.abandon()
            except Exception:  # noqa: BLE001 - the failure being raised matters, not this one
                pass


def _put(writer: ForecastWriter, method: str, *args, **kwargs) -> None:
    """``writer.method(*args)``, a failure named by the file and its cause (a full disk as such)."""
    try:
        getattr(writer, method)(*args, **kwargs)
    except (OSError, RuntimeError) as exc:
        raise write_failure(writer.partial_path, exc) from None


# -- file layout -----------------------------------------------------------------------------------

def _define(ds: netCDF4.Dataset, *, variables, units, standard_names, long_names, lat, lon, init, leads,
            product, n_members, complevel, attrs, filename, member_lags=None, leading=None,
            extra_attrs=None) -> None:
    """Dimensions, coordinates, data variables and global attributes of a new file (the layout of :mod:`.cf`)."""
    coords = cf.coordinates(init, leads, lat, lon, n_members if product == "members" else None, member_lags,
                            statistic=cf.is_statistic(product))
    for name, values, dims, _ in coords:
        if dims == (name,):
            ds.createDimension(name, len(values))
    for name, values, dims, attributes in coords:
        v = ds.createVariable(name, values.dtype.str[1:], dims)
        v.setncatts(attributes)
        v[:] = values
    dims = cf.data_dimensions(product)
    chunks = (1,) * (len(dims) - 2) + (len(lat), len(lon))
    for axis in {a.dim: a for a in (leading or {}).values()}.values():  # a derived product's leading axes
        ds.createDimension(axis.dim, len(axis.values))
        ds.createVariable(axis.dim, np.asarray(axis.values).dtype.str[1:], (axis.dim,))
        ds.variables[axis.dim].setncatts(dict(axis.attrs))
        ds.variables[axis.dim][:] = axis.values
    for name in variables:
        vdims, vchunks = dims, chunks
        if leading:
            vdims, vchunks = (leading[name].dim,) + dims, (1,) + chunks
        v = ds.createVariable(name, "f4", vdims, zlib=True, complevel=complevel, shuffle=True,
                              chunksizes=vchunks, fill_value=cf.FILL_VALUE)
        v.setncatts(cf.variable_attributes(name, units, standard_names, long_names, product,
                                           lagged=member_lags is not None))
        v.setncatts(dict((extra_attrs or {}).get(name, {})))
    glob = cf.global_attributes(product, init, filename, n_members)
    if "ensemble_size" in glob:
        glob["ensemble_size"] = np.int32(glob["ensemble_size"])
    glob.update(attrs)
    glob["leads_complete"] = np.int32(0)
    ds.setncatts(glob)


# -- small helpers ---------------------------------------------------------------------------------

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
