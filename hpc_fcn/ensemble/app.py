"""The ensemble run: perturbed initial conditions rolled out, written, and scored across ranks.

A thin driver over the run's parts: :mod:`.resolve` (config, checkpoint, layout, device and grid,
decided once), :mod:`.rollout` (the loop and resume), :mod:`.products` (ensemble statistics and the
files) and :mod:`.scoring` (the member exchange and the score accumulators).
"""
from __future__ import annotations

import time
from pathlib import Path

from ..accel.power import PowerSampler, joules_per_member_step
from ..config import save_resolved
from ..tracing import Tracer
from .config import EnsembleConfig
from .perturb import Perturber
from .products import Products
from .report import metrics_document, rank_timings
from .resolve import ResolvedRun, resolve
from .resume import ResumeStore
from .rollout import Rollout
from .scoring import Scoring


class EnsembleRun:
    """One configured ensemble run on the ranks of ``comm``."""

    def __init__(self, cfg: EnsembleConfig, comm, suggest=None):
        from ..forecaster import Forecaster
        self.comm = comm
        self.tracer = Tracer(enabled=True, rank=comm.rank)
        run: ResolvedRun = resolve(cfg, comm, self.tracer, suggest)
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
        if self.cfg.perturbation.method == "analysis_ensemble":
            from .analysis_ensemble import AnalysisEnsemblePerturber
            self.perturber = AnalysisEnsemblePerturber.for_run(self.cfg, ds.root, ds, run.rows, run.cols)
        else:
            self.perturber = Perturber(self.cfg.perturbation, channels=run.channels, nlat=ds.nlat, nlon=ds.nlon,
                                       rows=run.rows, cols=run.cols, seed=ens.seed, control=ens.control)
        self.outdir = Path(self.cfg.output.dir)

    def run(self) -> dict:
        """Roll out every initial time, write the products and return the metrics document."""
        run, comm = self.resolved, self.comm
        if comm.rank == 0:
            self.outdir.mkdir(parents=True, exist_ok=True)
            save_resolved(self.cfg, self.outdir)
        self.grid.world.barrier(tag="start")
        scoring = Scoring(run)
        products = Products(run, member_comm=scoring.comm)
        store = ResumeStore(self.outdir, comm, dict(self.grid.shape, members=run.members,
                                                     inits=len(self.plan.init_indices), steps=self.plan.lead_steps))
        power = PowerSampler(run.device).start()
        t_start = time.perf_counter()
        member_steps = Rollout(run, self.forecaster, self.perturber, products, scoring).run_all(store)
        wall = time.perf_counter() - t_start
        self.energy = dict(power.stop().as_dict(), member_steps=member_steps)  # GPU joules (None without NVML)
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
        timings = self.grid.world.gather(dict(rank_timings(self.tracer), wall=wall,
                                              group=self.grid.coords["ensemble"], energy=self.energy), root=0,
                                         tag="timings")
        if self.comm.rank == 0:
            energy = joules_per_member_step([t["energy"] for t in timings], self.energy["member_steps"])
            products.write_report(doc, timings, self.tracer.summary(), energy)
        if self.cfg.trace:
            from ..tracing import write_traces
            c = self.cfg
            write_traces(self.tracer, self.outdir / "traces", self.grid.world,
                         meta=dict(model_kwargs=c.model.kwargs(len(run.channels), len(run.channels)),
                                   layout=dict(self.grid.shape), members_per_pass=self.forecaster.members_per_pass,
                                   precision=c.inference.precision, members=run.members,
                                   steps=self.plan.lead_steps * len(self.plan.init_indices)))
        return doc
