"""The ensemble run: perturbed initial conditions rolled out, written, and scored across ranks.

A thin driver over the run's parts: :mod:`.resolve` (config, checkpoint, layout, device and grid,
decided once), :mod:`.rollout` (the loop and resume), :mod:`.products` (ensemble statistics and the
files) and :mod:`.scoring` (the member exchange and the score accumulators).
"""
from __future__ import annotations

import time
from pathlib import Path

from ..config import save_resolved
from ..tracing import Tracer
from .config import EnsembleConfig
from .perturb import Perturber
from .products import Products
from .report import metrics_document, rank_timings
from .resolve import ResolvedRun, resolve
from .snapshot import SnapshotStore
from .rollout import Rollout
from .scoring import Scoring


class EnsembleRun:
    """One configured ensemble run on the ranks of ``comm``."""

    def __init__(self, cfg: EnsembleConfig, comm):
        from ..forecaster import Forecaster
        self.comm = comm
        self.tracer = Tracer(enabled=True, rank=comm.rank)
        run: ResolvedRun = resolve(cfg, comm, self.tracer)
        self.resolved = run
        self.cfg, self.grid, self.plan = run.cfg, run.grid, run.plan
        if self.grid.model.size > 1:
            from ..parallel.model import DistributedAFNONet
            net = DistributedAFNONet.from_serial(run.serial, None, self.grid).eval()
        else:
            net = run.serial
        net = net.to(run.device)
        if self.cfg.trace:
            from ..instrument import instrument
            self._hooks = instrument(net, self.tracer)
        self.forecaster = Forecaster(net, self.cfg.inference, grid=self.grid, tracer=self.tracer)
        ds, ens = run.ds, self.cfg.ensemble
        self.perturber = Perturber(self.cfg.perturbation, channels=run.channels, nlat=ds.nlat, nlon=ds.nlon,
                                   rows=run.rows, cols=run.cols, seed=ens.seed, control=ens.control)
        self.outdir = Path(self.cfg.output.dir)

    def run(self) -> dict:
        """Roll out every initial time, write the products and return the metrics document."""
        run, comm = self.resolved, self.comm
        if comm.rank == 0:
            self.outdir.mkdir(parents=True, exist_ok=True)
            save_resolved(self.cfg, self.outdir)
        comm.Barrier()
        scoring = Scoring(run)
        products = Products(run, member_comm=scoring.comm)
        store = SnapshotStore(self.outdir, comm, dict(
            members=run.members, inits=[str(run.ds.times[i]) for i in self.plan.init_indices],
            steps=self.plan.lead_steps, output_steps=self.plan.output_steps, grid=[run.ds.nlat, run.ds.nlon],
            channels=run.channels, variables=run.out_vars, format=self.cfg.output.format,
            output_members=self.cfg.output.members))
        t_start = time.perf_counter()
        Rollout(run, self.forecaster, self.perturber, products, scoring).run_all(store)
        wall = time.perf_counter() - t_start
        doc = self.finish(scoring, products, wall)
        scoring.close()
        self.grid.close()  # releases the axis communicators and any torch.distributed groups
        return doc

    def finish(self, scoring: Scoring, products: Products, wall: float) -> dict:
        """Reduce the scores, write the report (rank 0) and the traces; returns the metrics document."""
        run = self.resolved
        scores = scoring.reduce()
        doc = metrics_document(scores, run.channels, self.plan.lead_hours, run.members,
                               [run.ds.times[i] for i in self.plan.init_indices], self.cfg.scoring.lat_weights)
        timings = self.comm.gather(dict(rank_timings(self.tracer), wall=wall, group=self.grid.coords["ensemble"]),
                                   root=0)
        if self.comm.rank == 0:
            products.write_report(doc, timings, self.tracer.summary())
        if self.cfg.trace:
            from ..tracing import write_traces
            c = self.cfg
            write_traces(self.tracer, self.outdir / "traces", self.comm,
                         meta=dict(model_kwargs=c.model.kwargs(len(run.channels), len(run.channels)),
                                   layout=dict(self.grid.shape), members_per_pass=self.forecaster.members_per_pass,
                                   precision=c.inference.precision, members=run.members,
                                   steps=self.plan.lead_steps * len(self.plan.init_indices)))
        return doc
