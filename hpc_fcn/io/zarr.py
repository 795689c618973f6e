"""Zarr v3 stores of ensemble forecasts that every rank writes directly: one store per initial time and product.

A store mirrors the netCDF file of the same initial time and product (docs/output_format.md): the same
coordinates, CF attributes and global attributes, one array per variable with dimensions
``([realization,] time, lead_time, lat, lon)``. Rank 0 creates the store (metadata only) before the first
step; then each rank writes its own members and window as region writes. Chunks are one member x one
lead x a block of rows x a block of columns, chosen from the layout (:func:`aligned_chunk`) so that no two
ranks ever write one chunk. Writes run in a background thread (:mod:`.background`). The global
attribute ``leads_complete`` counts the leads that every rank has finished; it is set by rank 0 after a
barrier. Until the store is closed it is named ``<name>.partial`` (as an unfinished netCDF file is): closing
consolidates its metadata and gives it its final name, so a store under its final name is always complete.
"""
from __future__ import annotations

import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import cf
from .backend import OutputBackend
from .outdir import write_failure

ZARR_SUFFIX = ".zarr"
PARTIAL_SUFFIX = ".partial"  # an unfinished store's name (as netCDF's): only a complete store has its final name
COMPRESSION_LEVEL = 1  # zstd level: fast enough that compression does not dominate the write


def store_path(outdir: str | os.PathLike, init_time: np.datetime64, product: str) -> Path:
    """``{outdir}/forecast_{YYYYmmddTHH}_{product}.zarr``: the store of one initial time and product."""
    return cf.output_path(outdir, init_time, product, ZARR_SUFFIX)


def partial_store(path: str | os.PathLike) -> Path:
    """Where a store lives until its last lead is written and its metadata consolidated."""
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


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
            "grid": a.get("grid"), "lead_hours": a.get("lead_hours"), "convention": a.get("convention", "cf")}


def mismatch(old: dict, new: dict) -> str | None:
    """The first fact on which an existing store differs from this run's, as words; None when they agree."""
    for key in ("product", "members", "grid", "variables", "lead_hours", "convention"):
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
               chunk_rows: int, chunk_cols: int, attrs: Mapping[str, Any] | None = None,
               member_lags: Sequence[int] | None = None, leading: Mapping[str, cf.LeadingAxis] | None = None,
               extra_attrs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Write the metadata and coordinates of a new store at ``path`` (replacing one that is there)."""
        import zarr
        from zarr.codecs import ZstdCodec
        variables, lat, lon, leads = cf.checked_layout(product, variables, units, long_names, lat, lon,
                                                       lead_hours, n_members)
        init = np.datetime64(init_time, "s")
        glob = cf.global_attributes(product, init, Path(path).name.removesuffix(PARTIAL_SUFFIX), n_members)
        glob.update(variables=variables, grid=[len(lat), len(lon)], lead_hours=leads)
        for k, v in (attrs or {}).items():
            glob[k] = v.tolist() if isinstance(v, np.ndarray) else v
        glob["leads_complete"] = 0
        root = zarr.open_group(path, mode="w", zarr_format=3, attributes=glob)
        members = n_members if product == "members" else None
        for name, values, dims, attributes in cf.coordinates(init, leads, lat, lon, members, member_lags,
                                                             statistic=cf.is_statistic(product)):
            a = root.create_array(name, shape=values.shape, dtype=values.dtype.str[1:], dimension_names=dims,
                                  attributes=attributes, fill_value=None, compressors=None)
            a[...] = values
        dims = cf.data_dimensions(product)
        shape = ((n_members,) if members else ()) + (1, len(leads), len(lat), len(lon))
        chunks = (1,) * (len(dims) - 2) + (chunk_rows, chunk_cols)
        for axis in {a.dim: a for a in (leading or {}).values()}.values():  # a derived product's leading axes
            values = np.asarray(axis.values)
            a = root.create_array(axis.dim, shape=values.shape, dtype=values.dtype.str[1:], dimension_names=(axis.dim,),
                                  attributes=dict(axis.attrs), fill_value=None, compressors=None)
            a[...] = values
        for name in variables:
            va = cf.variable_attributes(name, units, standard_names, long_names, product,
                                        lagged=member_lags is not None)
            va["missing_value"] = float(va["missing_value"])  # JSON attributes
            va.update((extra_attrs or {}).get(name, {}))
            vshape, vchunks, vdims = shape, chunks, dims
            if leading:
                n = len(leading[name].values)
                vshape, vchunks, vdims = (n,) + shape, (1,) + chunks, (leading[name].dim,) + dims
            root.create_array(name, shape=vshape, chunks=vchunks, dtype="f4", fill_value=cf.FILL_VALUE,
                              dimension_names=vdims, attributes=va,
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
        start = 0
        for i, name in enumerate(self.variables):
            if self.product == "members":
                self._arrays[name][members, 0, lead_index, rows, cols] = data[:, i]
            elif self.product in cf.DERIVED_PRODUCTS:  # each variable's leading axis, one after the other
                n = self._arrays[name].shape[0]
                self._arrays[name][:, 0, lead_index, rows, cols] = data[start:start + n]
                start += n
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


class ZarrOutput(OutputBackend):
    """zarr: rank 0 creates one store per product, then every rank writes its own window and members as region
    writes on the run's writer thread; ``leads_complete`` is recorded once every rank's writes are on disk."""

    def __init__(self, spec, window, writer=None, buffers=None):
        if writer is None or buffers is None:
            raise ValueError("zarr output needs the run's background writer and host buffers")
        super().__init__(spec, window, writer, buffers)
        self.stores: dict[str, ZarrForecastStore] = {}

    def open(self, init_time, resume_at):
        from ..runtime import UserError
        spec, w = self.spec, self.window
        paths = {p: store_path(spec.outdir, init_time, p) for p in spec.products}
        error = None
        if w.world.rank == 0:
            try:
                for p, path in paths.items():
                    error = self._prepare(path, p, init_time, resume_at)
                    if error:
                        break
            except OSError as exc:
                error = f"cannot write the zarr output in {spec.outdir}: {exc.strerror or exc}"
        error = w.world.bcast(error, root=0, tag="zarr_create")
        if error:
            raise UserError(error)
        self.stores = {p: self._store_class(p).open(partial_store(path)) for p, path in paths.items()}
        why = self.stores[spec.products[0]].check_aligned(w.rows, w.cols)
        if not why and w.block_rows is not None and w.block_rows.stop > w.block_rows.start:
            why = next((x for p in spec.derived if (x := self.stores[p].check_aligned(w.block_rows, w.cols))), None)
        why = w.world.allgather(why, tag="zarr_aligned")
        bad = next(((r, x) for r, x in enumerate(why) if x), None)
        if bad:
            raise UserError(f"rank {bad[0]}: the zarr store's chunks do not fit this layout ({bad[1]}); resume with "
                            f"parallel.h and parallel.w that divide the original ones")

    def _store_class(self, product: str) -> type[ZarrForecastStore]:
        """The store of ``product`` in the run's convention (WeatherBench2's for mean, spread and members)."""
        if self.spec.convention == "wb2" and product in cf.PRODUCTS:
            from .wb2 import Wb2ForecastStore
            return Wb2ForecastStore
        return ZarrForecastStore

    def _prepare(self, path: Path, product: str, init_time, resume_at: int | None) -> str | None:
        """Rank 0: the unfinished store of ``product`` at ``path``'s partial name, new or kept for a resume
        (a finished one becomes partial again); the reason when that cannot be."""
        spec, w = self.spec, self.window
        part = partial_store(path)
        want = {"product": product, "members": spec.n_members, "grid": [len(spec.lat), len(spec.lon)],
                "variables": list(spec.describe(product)["variables"]), "lead_hours": list(spec.lead_hours),
                "convention": spec.convention if product in cf.PRODUCTS else "cf"}
        for where in (part, path):
            have = describe_store(where)
            if have is not None and (why := mismatch(have, want)):
                return f"{where} holds another run's output ({why}); choose another output.dir or delete it"
        if resume_at is None:
            chunk = w.block_chunk if product in spec.derived else w.chunk
            self._store_class(product).create(part, init_time=init_time, attrs=spec.attrs, chunk_rows=chunk[0],
                                              chunk_cols=chunk[1], **spec.describe(product))
        elif describe_store(part) is None:
            if describe_store(path) is None:
                return f"cannot resume: {part} is missing; start again with resume=false"
            _replace_dir(path, part)  # reopening a finished store for rewriting: it is partial again
        return None

    def write(self, lead, statistics, members, agreed=False):
        from ..runtime import fail_together
        w = self.window
        jobs = []
        if w.writes_statistics:
            for name, t in statistics.items():
                jobs.append(_region_job(self.stores[name], lead, self.buffers.copy(t), rows=w.rows, cols=w.cols))
        if "members" in self.stores and w.writes_members and len(w.members):
            jobs.append(_region_job(self.stores["members"], lead, members.share(), channels=w.channels,
                                    rows=w.rows, cols=w.cols, members=slice(w.members.start, w.members.stop)))
        with w.tracer.region("io.submit", "io"):
            if not agreed:
                fail_together(w.world, self.writer.take_error(), tag="zarr_write")  # an earlier write's
            self.writer.submit(jobs)

    def write_blocks(self, lead, fields):
        w = self.window
        if w.block_rows is None or w.block_rows.stop <= w.block_rows.start:
            return
        jobs = []
        for name, data in fields.items():
            def job(store=self.stores[name], data=data):
                try:
                    store.write(lead, data, rows=w.block_rows, cols=w.cols)
                except OSError as exc:
                    raise write_failure(store.path, exc) from None
            jobs.append(job)
        with w.tracer.region("io.submit", "io"):
            self.writer.submit(jobs)

    def record_leads(self, leads_complete):
        for store in self.stores.values():
            store.set_leads_complete(leads_complete)

    def settle(self, leads_complete):
        from ..runtime import fail_together
        w = self.window
        with w.tracer.region("io.wait", "io"):
            self.writer.drain()
        fail_together(w.world, self.writer.take_error(), tag="settle")  # and the barrier
        if w.world.rank == 0:
            self.record_leads(leads_complete)

    def close(self, leads_complete):
        if leads_complete is None:  # an error path: a store is complete up to the leads it records
            return
        self.settle(leads_complete)
        if self.window.world.rank == 0:
            for store in self.stores.values():
                store.consolidate(store.path)
                _replace_dir(store.path, store.path.with_name(store.path.name.removesuffix(PARTIAL_SUFFIX)))

    def abandon(self):
        """Nothing to release: a store is complete up to the leads it records."""


def _region_job(store: ZarrForecastStore, lead: int, data, channels=None, **where):
    """A write job for the writer thread: waits for the host copy, writes one region, gives the buffer back; a
    failure names the store (and a full disk's free space)."""
    def job():
        try:
            arr = data.wait()
            if channels is not None:
                arr = arr[:, channels]
            store.write(lead, arr.numpy(), **where)
        except OSError as exc:
            raise write_failure(store.path, exc) from None
        finally:
            data.release()
    return job


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename the store ``src`` to ``dst``, replacing a store there."""
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)
