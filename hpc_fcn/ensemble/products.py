"""The ensemble's products: mean and spread reduced over the ensemble axis, the outputs, the report.

At each output step the ensemble sums of each window are reduced on the device and handed, with the
members, to the run's output backend (:mod:`hpc_fcn.io.backend`: netCDF gathered to rank 0, or zarr
written by every rank). The probability products (:mod:`.probabilities`), computed by the scoring's member
exchange on a block of rows per rank, are written through the same backend (:meth:`Products.write_derived`).
At the end rank 0 writes metrics.json, metrics.md and timings.json.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..accel.hostcopy import HostBuffers, HostCopy
from ..config import dump_yaml
from ..io.backend import OutputBackend, OutputSpec, RankWindow, backend_class
from ..io.cf import products as output_products
from .report import format_table, phase_table, timing_table
from .resolve import ResolvedRun

log = logging.getLogger("hpc_fcn")


def checkpoint_text(model_cfg) -> str:
    """The model's weights in words (the ``model_checkpoint`` attribute): a file, the built-in model, or random."""
    ck = model_cfg.checkpoint
    if ck is None:
        return f"none: random weights (model.seed={model_cfg.seed})"
    if ck == "builtin":
        from ..setup import BUILTIN_CHECKPOINT, BUILTIN_STOCHASTIC
        return f"built-in model {(BUILTIN_STOCHASTIC if model_cfg.stochastic else BUILTIN_CHECKPOINT).name}"
    return str(ck)


class Products:
    """Ensemble statistics and the outputs of one run, in the format its config names."""

    def __init__(self, run: ResolvedRun, member_comm, identity: dict | None = None, writer=None, derived=None,
                 block_rows: slice | None = None):
        """``member_comm``: the ranks holding distinct members of one window (matmul replicas send nothing);
        ``writer``: the run's :class:`~hpc_fcn.io.background.BackgroundWriter` (the caller closes it);
        ``derived``: the run's :class:`~.probabilities.ProbabilityProducts` (None: none), computed on this
        rank's ``block_rows`` (:meth:`.scoring.Scoring.block_rows`)."""
        self.run = run
        self.identity = identity  # rank 0's run identity, stored in every file
        self.outdir = Path(run.cfg.output.dir).expanduser()
        self.member_comm = member_comm
        self.derived, self.block_rows = derived, block_rows
        self.products = output_products(run.cfg.output.members) + (derived.products if derived else ())
        self.buffers = HostBuffers(run.device)  # host copies of statistics and members, reused
        self.output: OutputBackend = backend_class(run.cfg.output.format)(self.spec(), self.window(), writer,
                                                                          self.buffers)

    def _attrs(self) -> dict:
        run, cfg = self.run, self.run.cfg
        attrs = {"title": f"hpc_fcn ensemble forecast ({run.members} members)",
                 "lagged": cfg.ensemble.lagged, "lag_hours": run.lag.hours,  # lagged initial times (1: none)
                 "config": dump_yaml(cfg), "ensemble_seed": cfg.ensemble.seed,
                 "perturbation_method": cfg.perturbation.method,
                 "perturbation_amplitude": cfg.perturbation.amplitude,
                 "perturbation_units": "normalised (fraction of each channel's global standard deviation)",
                 "model_checkpoint": checkpoint_text(cfg.model),
                 "layout": " ".join(f"{axis}={n}" for axis, n in run.grid.shape.items())}
        if cfg.output.institution:  # CF's institution: where the data was produced (omitted when not given)
            attrs["institution"] = cfg.output.institution
        if self.identity is not None:
            from .identity import run_id
            attrs.update(run_id=run_id(self.identity), run_identity=json.dumps(self.identity, sort_keys=True))
        return attrs

    def spec(self) -> OutputSpec:
        """What every rank's outputs hold (the same on every rank)."""
        run, ds = self.run, self.run.ds
        derived = {}
        if self.derived is not None:
            derived = self.derived.layouts(ds.units, ds.standard_names, ds.long_names)
        return OutputSpec(outdir=self.outdir, products=self.products, variables=run.out_vars, derived=derived,
                          units={v: ds.units[v] for v in run.out_vars},
                          standard_names={v: ds.standard_names.get(v) for v in run.out_vars},
                          long_names={v: ds.long_names[v] for v in run.out_vars}, lat=ds.lat, lon=ds.lon,
                          lead_hours=run.plan.lead_hours, n_members=run.members, attrs=self._attrs(),
                          convention=run.cfg.output.convention,
                          member_lags=run.lag.member_lags() if run.lag.groups > 1 else None)

    def window(self) -> RankWindow:
        """This rank's share of the outputs."""
        run = self.run
        return RankWindow(world=run.grid.world, spatial=run.grid.spatial, member_ranks=self.member_comm,
                          rows=run.rows, cols=run.cols, members=run.my_members, channels=run.out_idx,
                          writes_statistics=run.grid.coords["ensemble"] == 0 and run.scorer,
                          writes_members=run.scorer, chunk=self.chunking(), tracer=run.tracer,
                          block_rows=self.block_rows, block_chunk=self.block_chunking())

    def chunking(self) -> tuple[int, int]:
        """Rows and columns of an output block such that block boundaries of every rank's window are block
        boundaries (zarr chunks: one writer each)."""
        from ..io.zarr import aligned_chunk
        from ..model.config import pair, token_grid
        from ..parallel.split import shard_range
        run = self.run
        mc = run.cfg.model
        p1, p2 = pair(mc.patch_size)
        H, W = token_grid(mc.img_size, mc.patch_size)
        gh, gw = run.grid.shape["h"], run.grid.shape["w"]
        rows = aligned_chunk(run.ds.nlat, [shard_range(H, gh, i)[0] * p1 for i in range(gh)])
        cols = aligned_chunk(run.ds.nlon, [shard_range(W, gw, i)[0] * p2 for i in range(gw)])
        return rows, cols

    def block_chunking(self) -> tuple[int, int]:
        """Rows and columns of an output block of the derived products whose boundaries include every rank's
        block of rows (:meth:`.scoring.Scoring.block_rows`: its window's rows split over the ensemble axis)."""
        from ..io.zarr import aligned_chunk
        from .exchange import row_blocks
        run = self.run
        mc = run.cfg.model
        sizes, _ = run.grid.window_sizes(mc.img_size, mc.patch_size)
        starts, s = [], 0
        for n in sizes:
            starts += [s + b.start for b in row_blocks(n, run.grid.shape["ensemble"])]
            s += n
        return aligned_chunk(run.ds.nlat, starts), self.chunking()[1]

    # -- one initial time: the backend's life cycle ------------------------------------------------------
    def open(self, init_time, resume_at: int | None) -> None:
        """The outputs of one initial time; ``resume_at``: leads already written (collective)."""
        with self.run.tracer.region("io.open", "io"):  # creating files or stores: IO in the timings
            self.output.open(init_time, resume_at)

    def statistics(self, phys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and spread of the written channels on this window (see :func:`ensemble_statistics`)."""
        run = self.run
        with run.tracer.region("ensemble_stats", "compute"):
            return ensemble_statistics(phys[:, run.out_idx], run.members, run.grid.ensemble)

    def take_write_error(self) -> BaseException | None:
        """This rank's writer-thread error so far (cleared), for the caller to agree on over the ranks."""
        return self.output.take_error()

    def write(self, li: int, phys: torch.Tensor, host: HostCopy | None, agreed: bool = False) -> None:
        """Write lead ``li``: mean and spread of ``phys`` (this group's members on the device), and the members.

        ``host``: the same members' host copy (float32, possibly still in flight) when the members product or the
        scores need them. ``agreed``: the caller has just shared the writer's errors over the ranks
        (:meth:`take_write_error`), so no second collective is needed here.
        """
        mean, spread = self.statistics(phys)
        self.output.write(li, {"mean": mean, "spread": spread}, host, agreed=agreed)

    def write_derived(self, li: int, fields: dict) -> None:
        """Write lead ``li`` of the probability products: this rank's block (:meth:`.scoring.Scoring.add`'s
        result); collective over the scoring ranks."""
        self.output.write_blocks(li, fields)

    def record_leads(self, leads_complete: int) -> None:
        """Rank 0, once every rank's writes of the first ``leads_complete`` leads are on disk: record it."""
        self.output.record_leads(leads_complete)

    def close(self, leads_complete: int | None = None) -> None:
        """Finish the outputs of one initial time (collective); None after an error."""
        with self.run.tracer.region("io.close", "io"):
            self.output.close(leads_complete)

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
        print(phase_table(timings), flush=True)
        log.info("outputs in %s", self.outdir)


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
