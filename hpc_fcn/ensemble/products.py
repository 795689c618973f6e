"""The ensemble's products: mean and spread reduced over the ensemble axis, the files rank 0 writes, the report.

At each output step every rank adds its members to the ensemble sums of its window; the spatial
windows are gathered to world rank 0, which writes ``forecast_<init>_{mean,spread[,members]}.nc``.
At the end rank 0 writes metrics.json, metrics.md and timings.json.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..config import dump_yaml
from ..io.outdir import check_space, write_failure
from .report import format_table, timing_table
from .resolve import ResolvedRun

log = logging.getLogger("hpc_fcn")
MARGIN = 1 << 20  # bytes kept free beyond a lead's estimate (netCDF/HDF5 metadata)


class Products:
    """Ensemble statistics and the output files of one run."""

    def __init__(self, run: ResolvedRun, member_comm, identity: dict | None = None):
        self.run = run
        self.identity = identity  # rank 0's run identity, stored in every file
        self.outdir = Path(run.cfg.output.dir).expanduser()
        self.ens_comm = run.grid.ensemble
        self.member_comm = member_comm  # matmul replicas send nothing to the writer

    def writers(self, init_time, resume_at: int | None) -> dict:
        """The output files of one initial time (only world rank 0 writes); ``resume_at``: leads already written."""
        from ..io.netcdf import ForecastWriter, forecast_path, partial_path
        run = self.run
        if run.comm.rank != 0:
            return {}
        cfg, ds = run.cfg, run.ds
        products = ["mean", "spread"] + (["members"] if cfg.output.members else [])
        attrs = {"title": f"hpc_fcn ensemble forecast ({cfg.ensemble.members} members)",
                 "config": dump_yaml(cfg), "ensemble_seed": cfg.ensemble.seed,
                 "perturbation_method": cfg.perturbation.method,
                 "perturbation_amplitude": cfg.perturbation.amplitude,
                 "perturbation_units": "normalised (fraction of each channel's global standard deviation)",
                 "model_checkpoint": str(cfg.model.checkpoint), "layout": str(run.grid.shape)}
        if self.identity is not None:
            from .identity import run_id
            attrs.update(run_id=run_id(self.identity), run_identity=json.dumps(self.identity, sort_keys=True))
        out = {}
        for p in products:
            path = forecast_path(self.outdir, init_time, p)
            if resume_at is not None:
                out[p] = ForecastWriter.open_existing(path, resume_at=resume_at)
                continue
            try:
                check_space(path.parent, self.lead_bytes(p) + MARGIN, str(partial_path(path)))
                out[p] = ForecastWriter(
                    path, variables=run.out_vars, units={v: ds.units[v] for v in run.out_vars},
                    standard_names={v: ds.standard_names.get(v) for v in run.out_vars},
                    long_names={v: ds.long_names[v] for v in run.out_vars}, lat=ds.lat, lon=ds.lon,
                    init_time=init_time, lead_hours=run.plan.lead_hours, product=p,
                    n_members=run.members, attrs=attrs)
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
        """Close ``files`` after a failure as they were last flushed, keeping the first error."""
        for f in files.values():
            try:
                f.abandon()
            except Exception:  # noqa: BLE001 - the failure being raised matters, not this one
                pass

    def close(self, files: dict) -> None:
        """Close ``files``; a complete file gets its final name."""
        for name, f in files.items():
            try:
                f.close()
            except (OSError, RuntimeError) as exc:
                self.abandon(files)
                raise write_failure(f.partial_path, exc) from None

    def write(self, li: int, phys: np.ndarray, files: dict) -> None:
        """Reduce mean and spread of lead ``li`` over the ensemble and write them (and the members) to ``files``."""
        from ..io.netcdf import gather_window_to_root
        run = self.run
        g, tr, M = run.grid, run.tracer, run.members
        with tr.region("ensemble_stats", "compute"):
            s1 = phys.astype(np.float64).sum(axis=0)
            s1 = self.ens_comm.all_reduce(s1, tag="ens_mean")
            mean = s1 / M
            s2 = ((phys - mean) ** 2).sum(axis=0)
            s2 = self.ens_comm.all_reduce(s2, tag="ens_var")
            spread = np.sqrt(s2 / (M - 1)) if M > 1 else np.zeros_like(s2)
        oi = run.out_idx
        full2 = (len(oi), run.ds.nlat, run.ds.nlon)
        with tr.region("io.write", "io"):
            for name, f in files.items():  # before touching a file, so a full disk leaves it as last flushed
                check_space(f.partial_path.parent, self.lead_bytes(name) + MARGIN, f"lead {li} of {f.partial_path}")
            if g.coords["ensemble"] == 0 and run.scorer:
                for name, field in (("mean", mean), ("spread", spread)):
                    full = gather_window_to_root(g.spatial, field[oi].astype(np.float32), full2,
                                                 rows=run.rows, cols=run.cols)
                    if full is not None:
                        _put(files[name], "write", li, full)
            if run.cfg.output.members and run.scorer:
                mine = run.my_members
                for m in range(M):  # one member at a time bounds the writer's memory to one field
                    own = phys[m - mine.start, oi][None] if m in mine else None
                    full = gather_window_to_root(self.member_comm, own, (1,) + full2, rows=run.rows, cols=run.cols)
                    if full is not None:
                        _put(files["members"], "write", li, full, members=slice(m, m + 1))
            for f in files.values():
                _put(f, "flush")

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
