"""Zarr v3 stores of ensemble forecasts that every rank writes directly: one store per initial time and product.

A store mirrors the netCDF file of the same initial time and product (docs/output_format.md): the same
coordinates, CF attributes and global attributes, one array per variable with dimensions
``([realization,] time, lead_time, lat, lon)``. Rank 0 creates the store (metadata only) before the first
step; then each rank writes its own members and window as region writes. Chunks are one member x one
lead x a block of rows x a block of columns, chosen from the layout (:func:`aligned_chunk`) so that no two
ranks ever write one chunk. Writes run in a background thread (:class:`BackgroundWriter`). The global
attribute ``leads_complete`` counts the leads that every rank has finished; it is set by rank 0 after a
barrier, and the metadata is consolidated when the store is closed.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .background import BackgroundWriter as _BackgroundWriter
from .netcdf import (CALENDAR, FILL_VALUE, TIME_UNITS, _check_axis, _check_leads, _check_product, _check_variables,
                     _now, hours_since_epoch, software_versions, variable_attributes)

ZARR_SUFFIX = ".zarr"
COMPRESSION_LEVEL = 1  # zstd level: fast enough that compression does not dominate the write


def store_path(outdir: str | os.PathLike, init_time: np.datetime64, product: str) -> Path:
    """``{outdir}/forecast_{YYYYmmddTHH}_{product}.zarr``: the store of one initial time and product."""
    _check_product(product)
    stamp = np.datetime_as_string(np.datetime64(init_time, "h"), unit="h").replace("-", "")
    return Path(outdir) / f"forecast_{stamp}_{product}{ZARR_SUFFIX}"


def aligned_chunk(n: int, starts: Sequence[int]) -> int:
    """A chunk length along an axis of size ``n`` whose boundaries include every block start in ``starts``.

    The largest block when the split is even; the greatest common divisor of the block starts otherwise
    (still one writer per chunk, only smaller chunks).
    """
    inner = sorted({int(s) for s in starts if 0 < int(s) < n})
    if not inner:
        return n
    g = 0
    for s in inner:
        g = math.gcd(g, s)
    return g


def _quiet_zarr():
    """Zarr warns that consolidated metadata is not in the v3 spec; xarray reads it, so silence that warning."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    return ctx


def describe_store(path: Path) -> dict | None:
    """The facts a run checks before reusing a store (members, grid, variables, leads), or None if absent."""
    import zarr
    if not (path / "zarr.json").is_file():
        return None
    g = zarr.open_group(path, mode="r")
    a = dict(g.attrs)
    return {"product": a.get("product"), "members": a.get("ensemble_size"), "variables": a.get("variables"),
            "grid": a.get("grid"), "lead_hours": a.get("lead_hours")}


def mismatch(old: dict, new: dict) -> str | None:
    """The first fact on which an existing store differs from this run's, as words; None when they agree."""
    for key in ("product", "members", "grid", "variables", "lead_hours"):
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)} (this run: {new.get(key)})"
    return None


class ZarrForecastStore:
    """One store (one initial time, one product). :meth:`create` on one rank, then :meth:`open` on every rank."""

    def __init__(self, path: Path, arrays: dict, group, product: str):
        self.path, self._arrays, self._group, self.product = Path(path), arrays, group, product
        self.variables = [n for n in arrays]

    @classmethod
    def create(cls, path: str | os.PathLike, *, variables: Sequence[str], units: Mapping[str, str],
               standard_names: Mapping[str, str | None], long_names: Mapping[str, str], lat, lon,
               init_time: np.datetime64, lead_hours: Sequence[int], product: str, n_members: int | None,
               chunk_rows: int, chunk_cols: int, attrs: Mapping[str, Any] | None = None) -> None:
        """Write the metadata and coordinates of a new store at ``path`` (replacing one that is there)."""
        import zarr
        from zarr.codecs import ZstdCodec
        _check_product(product)
        variables = list(variables)
        _check_variables(variables, units, long_names)
        lat, lon = _check_axis(lat, "lat", -90.0, 90.0), _check_axis(lon, "lon", -360.0, 360.0)
        leads = _check_leads(lead_hours)
        members = product == "members"
        if members and (n_members is None or n_members < 1):
            raise ValueError(f"the members product needs n_members >= 1, got {n_members}")
        init = np.datetime64(init_time, "s")
        from .. import __version__
        stamp = _now().isoformat(timespec="seconds").replace("+00:00", "Z")
        init_text = np.datetime_as_string(init, unit="m")
        what = {"mean": "ensemble mean", "spread": "ensemble spread (standard deviation)",
                "members": "ensemble members"}[product]
        glob: dict[str, Any] = {
            "Conventions": "CF-1.10", "title": f"FourCastNet {what} forecast from {init_text}",
            "institution": "unknown", "source": f"hpc_fcn {__version__}, FourCastNet AFNO",
            "history": f"{stamp} hpc_fcn {__version__}: created {Path(path).name}", "date_created": stamp,
            "product": product, "forecast_reference_time": f"{init_text}Z",
            "software_versions": software_versions(), "variables": variables, "grid": [len(lat), len(lon)],
            "lead_hours": leads}
        if n_members is not None:
            glob["ensemble_size"] = int(n_members)
        for k, v in (attrs or {}).items():
            glob[k] = v.tolist() if isinstance(v, np.ndarray) else v
        glob["leads_complete"] = 0
        root = zarr.open_group(path, mode="w", zarr_format=3, attributes=glob)

        def coord(name, values, dtype, dims, attributes):
            a = root.create_array(name, shape=np.shape(values), dtype=dtype, dimension_names=dims,
                                  attributes=attributes, fill_value=None, compressors=None)
            a[...] = np.asarray(values, dtype=dtype)

        t0 = hours_since_epoch(init)
        if members:
            coord("realization", np.arange(n_members), "i4", ("realization",),
                  {"standard_name": "realization", "long_name": "ensemble member number"})
        coord("time", [t0], "f8", ("time",), {"standard_name": "forecast_reference_time",
                                              "long_name": "initial time of the forecast", "units": TIME_UNITS,
                                              "calendar": CALENDAR})
        coord("lead_time", leads, "i4", ("lead_time",), {"standard_name": "forecast_period",
                                                         "long_name": "forecast lead time", "units": "hours"})
        coord("valid_time", t0 + np.asarray(leads, np.float64)[None, :], "f8", ("time", "lead_time"),
              {"standard_name": "time", "long_name": "valid time of the forecast", "units": TIME_UNITS,
               "calendar": CALENDAR})
        coord("lat", lat, "f8", ("lat",), {"standard_name": "latitude", "long_name": "latitude",
                                           "units": "degrees_north", "axis": "Y"})
        coord("lon", lon, "f8", ("lon",), {"standard_name": "longitude", "long_name": "longitude",
                                           "units": "degrees_east", "axis": "X"})
        dims = (("realization",) if members else ()) + ("time", "lead_time", "lat", "lon")
        shape = ((n_members,) if members else ()) + (1, len(leads), len(lat), len(lon))
        chunks = (1,) * (len(dims) - 2) + (chunk_rows, chunk_cols)
        for name in variables:
            va = variable_attributes(name, units, standard_names, long_names, product)
            va["missing_value"] = float(va["missing_value"])  # JSON attributes
            root.create_array(name, shape=shape, chunks=chunks, dtype="f4", fill_value=FILL_VALUE,
                              dimension_names=dims, attributes=va,
                              compressors=ZstdCodec(level=COMPRESSION_LEVEL))
        cls.consolidate(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ZarrForecastStore":
        """Open an existing store for region writes (every rank)."""
        import zarr
        root = zarr.open_group(path, mode="r+", use_consolidated=False)
        product = root.attrs["product"]
        arrays = {n: root[n] for n in root.attrs["variables"]}
        return cls(Path(path), arrays, root, product)

    @property
    def chunks(self) -> tuple[int, ...]:
        return next(iter(self._arrays.values())).chunks

    @property
    def leads_complete(self) -> int:
        return int(self._group.attrs.get("leads_complete", 0))

    def check_aligned(self, rows: slice, cols: slice) -> str | None:
        """Why the window rows x cols would share chunks with another rank's window, or None if it does not."""
        arr = next(iter(self._arrays.values()))
        cr, cc = arr.chunks[-2:]
        nr, nc = arr.shape[-2:]
        for what, s, c, n in (("rows", rows, cr, nr), ("columns", cols, cc, nc)):
            for edge in (s.start, s.stop):
                if edge % c and edge != n:
                    return f"{what} {s.start}..{s.stop} do not start and end on the store's {c}-{what[:-1]} chunks"
        return None

    def write(self, lead_index: int, data: np.ndarray, *, rows: slice, cols: slice,
              members: slice | None = None) -> None:
        """Write ``data`` ((m,) C, r, c) into lead ``lead_index`` of this rank's window (region write)."""
        data = np.asarray(data, dtype=np.float32)
        for i, name in enumerate(self.variables):
            if self.product == "members":
                self._arrays[name][members, 0, lead_index, rows, cols] = data[:, i]
            else:
                self._arrays[name][0, lead_index, rows, cols] = data[i]

    def set_leads_complete(self, n: int) -> None:
        """Record (rank 0, after every rank's writes are done) that the first ``n`` leads are complete."""
        self._group.attrs.update({"leads_complete": int(n)})

    @staticmethod
    def consolidate(path) -> None:
        import zarr
        ctx = _quiet_zarr()
        try:
            zarr.consolidate_metadata(str(path))
        finally:
            ctx.__exit__(None, None, None)


class BackgroundWriter(_BackgroundWriter):
    """The run's writer thread (:mod:`hpc_fcn.io.background`), naming the zarr output in its errors."""

    def __init__(self, depth: int = 2, what: str = "the zarr output"):
        super().__init__(depth, what)
