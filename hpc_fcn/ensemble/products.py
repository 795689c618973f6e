"""The ensemble's products: mean and spread reduced over the ensemble axis, the files rank 0 writes, the report.

At each output step the ensemble sums of each window are reduced on the device. With netCDF the
spatial windows are gathered to world rank 0, which writes ``forecast_<init>_{mean,spread[,members]}.nc``;
with zarr every rank writes its own members and window into ``forecast_<init>_<product>.zarr`` from a
background thread.
At the end rank 0 writes metrics.json, metrics.md and timings.json.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..accel.hostcopy import HostBuffers, HostCopy
from ..config import dump_yaml
from ..io.outdir import check_space, write_failure
from ..runtime import fail_together
from .report import format_table, timing_table
from .resolve import ResolvedRun

log = logging.getLogger("hpc_fcn")
MARGIN = 1 << 20  # bytes kept free beyond a lead's estimate (netCDF/HDF5 metadata)


class Products:
    """Ensemble statistics and the output files (netCDF through rank 0, or zarr written by every rank) of one run."""

    def __init__(self, run: ResolvedRun, member_comm, identity: dict | None = None, writer=None):
        """``writer``: the run's :class:`~hpc_fcn.io.background.BackgroundWriter` (needed for zarr; the caller
        closes it)."""
        self.run = run
        self.identity = identity  # rank 0's run identity, stored in every file
        self.outdir = Path(run.cfg.output.dir).expanduser()
        self.ens_comm = run.grid.ensemble
        self.member_comm = member_comm  # matmul replicas send nothing to the writer
        self.zarr = run.cfg.output.format == "zarr"
        self.products = ["mean", "spread"] + (["members"] if run.cfg.output.members else [])
        self._bg = writer
        if self.zarr and writer is None:
            raise ValueError("zarr output needs the run's background writer")
        self.buffers = HostBuffers(run.device)  # host copies of statistics and members, reused

    def _attrs(self) -> dict:
        run, cfg = self.run, self.run.cfg
        attrs = {"title": f"hpc_fcn ensemble forecast ({cfg.ensemble.members} members)",
                 "config": dump_yaml(cfg), "ensemble_seed": cfg.ensemble.seed,
                 "perturbation_method": cfg.perturbation.method,
                 "perturbation_amplitude": cfg.perturbation.amplitude,
                 "perturbation_units": "normalised (fraction of each channel's global standard deviation)",
                 "model_checkpoint": str(cfg.model.checkpoint), "layout": str(run.grid.shape)}
        if self.identity is not None:
            from .identity import run_id
            attrs.update(run_id=run_id(self.identity), run_identity=json.dumps(self.identity, sort_keys=True))
        return attrs

    def _describe(self, p: str) -> dict:
        ds = self.run.ds
        return dict(variables=self.run.out_vars, units={v: ds.units[v] for v in self.run.out_vars},
                    standard_names={v: ds.standard_names.get(v) for v in self.run.out_vars},
                    long_names={v: ds.long_names[v] for v in self.run.out_vars}, lat=ds.lat, lon=ds.lon,
                    lead_hours=self.run.plan.lead_hours, product=p, n_members=self.run.members)

    def writers(self, init_time, resume_at: int | None) -> dict:
        """The outputs of one initial time; ``resume_at``: leads already written. Collective for zarr."""
        if self.zarr:
            return self._zarr_stores(init_time, resume_at)
        from ..io.netcdf import ForecastWriter, forecast_path, partial_path
        run = self.run
        if run.comm.rank != 0:
            return {}
        out = {}
        for p in self.products:
            path = forecast_path(self.outdir, init_time, p)
            if resume_at is not None:
                out[p] = ForecastWriter.open_existing(path, resume_at=resume_at)
                continue
            try:
                check_space(path.parent, self.lead_bytes(p) + MARGIN, str(partial_path(path)))
                out[p] = ForecastWriter(path, init_time=init_time, attrs=self._attrs(), **self._describe(p))
            except (OSError, RuntimeError) as exc:
                self.abandon(out)
                raise write_failure(partial_path(path), exc) from None
        return out

    def lead_bytes(self, product: str) -> int:
        """Bytes of one lead of ``product`` before compression."""
        run = self.run
        plane = len(run.out_vars) * run.ds.nlat * run.ds.nlon * 4
        return plane * (run.members if product == "members" else 1)

    def abandon(self, files: dict) -> None:
        """Close netCDF ``files`` after a failure as they were last flushed, keeping the first error."""
        if self.zarr:
            return  # a store is complete up to the leads it records
        for f in files.values():
            try:
                f.abandon()
            except Exception:  # noqa: BLE001 - the failure being raised matters, not this one
                pass

    def chunking(self) -> tuple[int, int]:
        """Rows and columns of a zarr chunk: block boundaries of every rank's window are chunk boundaries."""
        from ..io.zarr import aligned_chunk
        from ..parallel.split import shard_range
        run = self.run
        mc = run.cfg.model
        (p1, p2) = (mc.patch_size, mc.patch_size) if isinstance(mc.patch_size, int) else tuple(mc.patch_size)
        H, W = mc.img_size[0] // p1, mc.img_size[1] // p2
        gh, gw = run.grid.shape["h"], run.grid.shape["w"]
        rows = aligned_chunk(run.ds.nlat, [shard_range(H, gh, i)[0] * p1 for i in range(gh)])
        cols = aligned_chunk(run.ds.nlon, [shard_range(W, gw, i)[0] * p2 for i in range(gw)])
        return rows, cols

    def _zarr_stores(self, init_time, resume_at: int | None) -> dict:
        from ..io.zarr import ZarrForecastStore, describe_store, mismatch, store_path
        from ..runtime import UserError
        run = self.run
        paths = {p: store_path(self.outdir, init_time, p) for p in self.products}
        error = None
        if run.comm.rank == 0:
            try:
                chunk_rows, chunk_cols = self.chunking()
                for p, path in paths.items():
                    info = self._describe(p)
                    want = {"product": p, "members": run.members if p == "members" else run.members,
                            "grid": [len(info["lat"]), len(info["lon"])], "variables": list(info["variables"]),
                            "lead_hours": list(info["lead_hours"])}
                    have = describe_store(path)
                    if have is not None and (why := mismatch(have, want)):
                        error = f"{path} holds another run's output ({why}); choose another output.dir or delete it"
                        break
                    if resume_at is None:
                        ZarrForecastStore.create(path, init_time=init_time, attrs=self._attrs(),
                                                 chunk_rows=chunk_rows, chunk_cols=chunk_cols, **info)
                    elif have is None:
                        error = f"cannot resume: {path} is missing; start again with resume=false"
                        break
            except OSError as exc:
                error = f"cannot write the zarr output in {self.outdir}: {exc.strerror or exc}"
        error = run.grid.world.bcast(error, root=0, tag="zarr_create")
        if error:
            raise UserError(error)
        stores = {p: ZarrForecastStore.open(path) for p, path in paths.items()}
        why = stores[self.products[0]].check_aligned(run.rows, run.cols)
        why = run.grid.world.allgather(why, tag="zarr_aligned")
        bad = next(((r, w) for r, w in enumerate(why) if w), None)
        if bad:
            raise UserError(f"rank {bad[0]}: the zarr store's chunks do not fit this layout ({bad[1]}); resume with "
                            f"parallel.h and parallel.w that divide the original ones")
        return stores

    def statistics(self, phys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and spread of the written channels on this window (see :func:`ensemble_statistics`)."""
        run = self.run
        with run.tracer.region("ensemble_stats", "compute"):
            return ensemble_statistics(phys[:, run.out_idx], run.members, run.grid.ensemble)

    def take_write_error(self) -> BaseException | None:
        """This rank's writer-thread error so far (cleared), for the caller to agree on over the ranks."""
        return self._bg.take_error() if self._bg is not None else None

    def write(self, li: int, phys: torch.Tensor, host: HostCopy | None, files: dict, agreed: bool = False) -> None:
        """Write lead ``li``: mean and spread of ``phys`` (this group's members on the device), and the members.

        ``host``: the same members' host copy (float32, possibly still in flight) when the members product or the
        scores need them; zarr writes hold it (``share``) until the writer thread has written it. ``agreed``: the
        caller has just shared the writer's errors over the ranks (:meth:`take_write_error`), so no second
        collective is needed here.
        """
        run = self.run
        mean, spread = self.statistics(phys)
        stats = {"mean": mean, "spread": spread}
        group0 = run.grid.coords["ensemble"] == 0 and run.scorer
        oi = run.out_idx
        if self.zarr:
            jobs = []
            if group0:
                for name, t in stats.items():
                    jobs.append(_region_job(files[name], li, self.buffers.copy(t), rows=run.rows, cols=run.cols))
            if run.cfg.output.members and run.scorer and len(run.my_members):
                mine = run.my_members
                jobs.append(_region_job(files["members"], li, host.share(), channels=oi, rows=run.rows,
                                        cols=run.cols, members=slice(mine.start, mine.stop)))
            with run.tracer.region("io.submit", "io"):
                if not agreed:
                    fail_together(run.grid.world, self._bg.take_error(), tag="zarr_write")  # an earlier write's
                self._bg.submit(jobs)
            return
        host = host.numpy() if host is not None else None
        from ..io.netcdf import gather_window_to_root
        M, tr = run.members, run.tracer
        full2 = (len(oi), run.ds.nlat, run.ds.nlon)
        with tr.region("io.write", "io"):
            for name, f in files.items():  # before touching a file, so a full disk leaves it as last flushed
                check_space(f.partial_path.parent, self.lead_bytes(name) + MARGIN, f"lead {li} of {f.partial_path}")
            if group0:
                for name, t in stats.items():
                    full = gather_window_to_root(run.grid.spatial, t.cpu().numpy(), full2,
                                                 rows=run.rows, cols=run.cols)
                    if full is not None:
                        _put(files[name], "write", li, full)
            if run.cfg.output.members and run.scorer:
                mine = run.my_members
                for m in range(M):  # one member at a time bounds the writer's memory to one field
                    own = host[m - mine.start, oi][None] if m in mine else None
                    full = gather_window_to_root(self.member_comm, own, (1,) + full2, rows=run.rows, cols=run.cols)
                    if full is not None:
                        _put(files["members"], "write", li, full, members=slice(m, m + 1))
            for f in files.values():
                _put(f, "flush")

    def settle(self, files: dict, leads_complete: int) -> None:
        """Wait until every rank's writes so far are on disk and record ``leads_complete`` (collective)."""
        if not self.zarr:
            return  # the netCDF writer flushes at every output step
        with self.run.tracer.region("io.wait", "io"):
            self._bg.drain()
        fail_together(self.run.grid.world, self._bg.take_error(), tag="settle")  # and the barrier
        if self.run.comm.rank == 0:
            self.record_leads(files, leads_complete)

    def record_leads(self, files: dict, leads_complete: int) -> None:
        """Rank 0, once every rank's writes of the first ``leads_complete`` leads are on disk: record it (zarr)."""
        if self.zarr:
            for store in files.values():
                store.set_leads_complete(leads_complete)

    def close(self, files: dict, leads_complete: int | None = None) -> None:
        """Finish the outputs of one initial time (collective for zarr: waits for every rank's writes)."""
        if not self.zarr:
            if leads_complete is None:  # an error path: the files stay as last flushed
                self.abandon(files)
                return
            for f in files.values():
                try:
                    f.close()  # a complete file gets its final name
                except (OSError, RuntimeError) as exc:
                    self.abandon(files)
                    raise write_failure(f.partial_path, exc) from None
            return
        if leads_complete is None:  # an error path: leave the stores as they are
            return
        self.settle(files, leads_complete)
        if self.run.comm.rank == 0:
            for store in files.values():
                store.consolidate(store.path)

    def write_report(self, doc: dict, timings: list[dict], rank0_regions: dict, energy: dict | None = None) -> None:
        """metrics.json, metrics.md and timings.json, and the tables on stdout (rank 0)."""
        run = self.run
        (self.outdir / "metrics.json").write_text(json.dumps(doc, indent=1))
        (self.outdir / "timings.json").write_text(json.dumps({"ranks": timings, "rank0_regions": rank0_regions,
                                                              "energy": energy}, indent=1))
        table = format_table(doc, run.cfg.scoring.table_leads)
        (self.outdir / "metrics.md").write_text(table + "\n")
        print(table, flush=True)
        print(timing_table(timings, run.members * run.plan.lead_steps * len(run.plan.init_indices)), flush=True)
        log.info("outputs in %s", self.outdir)


def _put(writer, method: str, *args, **kwargs) -> None:
    """``writer.method(*args)``, a failure named by the file and its cause (a full disk as such)."""
    try:
        getattr(writer, method)(*args, **kwargs)
    except (OSError, RuntimeError) as exc:
        raise write_failure(writer.partial_path, exc) from None


def _region_job(store, li: int, data: HostCopy, channels=None, **where):
    """A write job for the writer thread: waits for the host copy, writes one region, gives the buffer back."""
    def job():
        try:
            arr = data.wait()
            if channels is not None:
                arr = arr[:, channels]
            store.write(li, arr.numpy(), **where)
        finally:
            data.release()
    return job


def ensemble_statistics(x: torch.Tensor, members: int, ensemble_axis) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and spread (standard deviation, ddof 1) over ``members`` members, of which ``x`` holds this group's.

    On the device, in two float32 passes (the sum, then the sum of squared deviations from the mean), so the
    spread has no cancellation; only (C, rows, cols) sums cross the ensemble axis (its Communicator).
    """
    s1 = x.sum(dim=0)
    if ensemble_axis.size > 1:
        s1 = ensemble_axis.all_reduce(s1, tag="ens_mean")
    mean = s1 / members
    s2 = (x - mean).square().sum(dim=0)
    if ensemble_axis.size > 1:
        s2 = ensemble_axis.all_reduce(s2, tag="ens_var")
    spread = (s2 / (members - 1)).sqrt() if members > 1 else torch.zeros_like(s2)
    return mean, spread
