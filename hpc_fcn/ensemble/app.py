"""The ensemble run: perturbed initial conditions rolled out, written, and scored across ranks.

A thin driver over the run's parts: :mod:`.resolve` (config, checkpoint, layout, device and grid,
decided once), :mod:`.rollout` (the loop and resume), :mod:`.products` (ensemble statistics and the
files) and :mod:`.scoring` (the member exchange and the score accumulators).

The output folder belongs to the run from start to end: rank 0 takes its lock (:mod:`hpc_fcn.io.outdir`)
before anything is resolved or written, checks that the first output step fits on the disk, and
checks that a resumed folder holds this run (:mod:`.identity`) before it writes anything into it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..accel.power import PowerSampler, joules_per_member_step
from ..config import save_resolved
from ..io.background import BackgroundWriter
from ..io.outdir import OutputLock, free_bytes, human
from ..memwatch import PhaseMeter, process_seconds
from ..runtime import UserError, root_decides
from ..tracing import Tracer
from .config import EnsembleConfig
from .identity import run_identity
from .perturb import Perturber
from .products import Products
from .report import metrics_document, phase_of, rank_timings
from .resolve import ResolvedRun, check_before_data, resolve
from .rollout import Rollout
from .scoring import Scoring
from .snapshot import SnapshotStore

log = logging.getLogger("hpc_fcn")


def make_forecaster(run: ResolvedRun, tracer: Tracer, hooks: list | None = None, keep_serial: bool = True):
    """The run's model on its device (distributed over matmul when the grid has it), wrapped in a Forecaster.

    Every command that steps the ensemble (the app, :mod:`.tune`) builds its model here. ``hooks``: a list
    that receives the tracing hooks when given (``trace: true``). ``keep_serial=False``: a distributed model
    lets go of the serial one it was sharded from (the whole network's weights, 0.3 GB at production size).
    """
    from ..forecaster import Forecaster
    if run.grid.model.size > 1:
        from ..parallel.model import DistributedAFNONet
        net = DistributedAFNONet.from_serial(run.serial, None, run.grid).eval()
        if not keep_serial:
            run.serial = None
    else:
        net = run.serial
    net = net.to(run.device)
    if hooks is not None:
        from ..instrument import instrument
        hooks.append(instrument(net, tracer))
    slots = None
    if run.grid.model.size == 1 and run.device.type == "cpu":  # a pass that waits on no other rank (collective)
        import torch

        from ..parallel.slots import node_slots
        slots = node_slots(run.grid.world, threads=torch.get_num_threads(), tracer=tracer)
    return Forecaster(net, run.cfg.inference, grid=run.grid, tracer=tracer, slots=slots)


def make_perturber(run: ResolvedRun, perturbation=None):
    """The initial-condition perturber of ``run`` (``perturbation``: another perturbation section to use)."""
    cfg, ds = run.cfg, run.ds
    pc = perturbation if perturbation is not None else cfg.perturbation
    if pc.method == "analysis_ensemble":
        from dataclasses import replace
        from .analysis_ensemble import AnalysisEnsemblePerturber
        return AnalysisEnsemblePerturber.for_run(replace(cfg, perturbation=pc), ds.root, ds, run.rows, run.cols)
    return Perturber(pc, channels=run.channels, nlat=ds.nlat, nlon=ds.nlon, rows=run.rows, cols=run.cols,
                     seed=cfg.ensemble.seed, control=cfg.ensemble.control)


def make_model_noise(run: ResolvedRun):
    """The stochastic model's member noise on this rank's token window (None for a deterministic model)."""
    mc, ens = run.cfg.model, run.cfg.ensemble
    if not mc.stochastic:
        return None
    from ..model.config import token_grid
    from .model_noise import ModelNoise
    rows, cols = run.grid.token_window(mc.img_size, mc.patch_size)
    log.info("stochastic model: %d noise channels per token, keyed by (seed, initial time, member, step), "
             "correlation length %s, e-folding time %s, scale %g%s", mc.noise_dim,
             f"{mc.noise_length_km:g} km" if mc.noise_length_km else "none (white)",
             f"{mc.noise_memory_hours:g} h" if mc.noise_memory_hours else "none", mc.noise_scale,
             "; member 0 (control) runs without noise" if ens.control else "")
    return ModelNoise.for_model(mc, token_grid(mc.img_size, mc.patch_size), rows, cols, run.plan.dt_hours,
                                seed=ens.seed, control=0 if ens.control else None)


class EnsembleRun:
    """One configured ensemble run on the ranks of ``comm``."""

    def __init__(self, cfg: EnsembleConfig, comm, suggest=None):
        self.suggest = suggest
        self.comm = comm
        self._hooks: list = []
        self.outdir = Path(cfg.output.dir).expanduser()
        self.lock: OutputLock | None = None
        # seconds and peak memory per phase of this rank (timings.json); start-up counts from the process's start
        self.phases = PhaseMeter()
        self.phases.start("startup")
        check_before_data(cfg, comm.size)  # a bad config fails before the output folder is made
        root_decides(comm, self._lock)
        try:
            self._build(cfg)
        except BaseException:
            self.release()
            raise
        self.phases.stop()
        self.phases.seconds["startup"] = process_seconds() - self.phases.seconds.get("checkpoint", 0.0)

    def _lock(self) -> None:
        self.lock = OutputLock.acquire(self.outdir)

    def release(self) -> None:
        """Give the output folder back (rank 0)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _build(self, cfg: EnsembleConfig) -> None:
        comm = self.comm
        self.tracer = Tracer(enabled=True, rank=comm.rank)
        self.tracer.watch_phases(self.phases, phase_of)
        run: ResolvedRun = resolve(cfg, comm, self.tracer, self.suggest)
        run.cfg.products.check_channels(run.channels)  # every rank alike, before anything is written
        self.resolved = run
        self.cfg, self.grid, self.plan = run.cfg, run.grid, run.plan
        self.identity = root_decides(comm, self._identity)
        root_decides(comm, self._check_space)
        root_decides(comm, self._check_bred_history)
        self.forecaster = make_forecaster(run, self.tracer, hooks=self._hooks if self.cfg.trace else None,
                                          keep_serial=False)
        self.perturber = make_perturber(run)
        self.model_noise = make_model_noise(run)

    def _identity(self) -> dict:
        from ..setup import checkpoint_path
        run, ck = self.resolved, self.cfg.model.checkpoint
        return run_identity(self.cfg, run.data_root, [run.ds.times[i] for i in self.plan.init_indices],
                            self.plan.lead_steps, checkpoint_path(ck, self.cfg.model.stochastic) if ck is not None else None)

    def _check_bred_history(self) -> None:
        """Bred vectors: every initial time's earlier analyses are in the data (checked before any output)."""
        from .perturb import missing_bred_history
        pc, run = self.cfg.perturbation, self.resolved
        if pc.method != "bred":
            return
        inits = run.lag.initial_times([run.ds.times[i] for i in self.plan.init_indices])  # every lag group's
        gap = missing_bred_history(run.analyses, inits, pc.bred_cycles, pc.bred_steps, run.ds.dt_hours)
        if gap is not None:
            raise UserError(f"bred vectors at {gap[0]} need the analysis at {gap[1]} ({pc.bred_cycles} cycles x "
                            f"{pc.bred_steps} steps before it), which no split of {run.data_root} has; choose a later "
                            "initial_conditions.start")

    def step_bytes(self) -> tuple[int, int]:
        """(outputs, resume snapshot) bytes of one output step, before compression."""
        from ..io.backend import lead_bytes
        from ..io.cf import products
        run = self.resolved
        files = sum(lead_bytes(p, len(run.out_vars), run.ds.nlat, run.ds.nlon, run.members)
                    for p in products(self.cfg.output.members))
        plane = run.ds.nlat * run.ds.nlon * 4
        pc = self.cfg.products  # probability products: one plane per threshold, per quantile level and channel
        files += plane * (sum(len(t) for sides in pc.probabilities.values() for t in sides.values())
                          + len(pc.quantiles) * len(run.out_vars))
        snapshot = run.members * len(run.channels) * plane if self.cfg.resume else 0  # scoring ranks' windows
        return files, snapshot

    def _check_space(self) -> None:
        from ..io.netcdf import MARGIN
        files, snapshot = self.step_bytes()
        free = free_bytes(self.outdir)
        fmt = self.cfg.output.format
        log.info("output.dir %s: about %s per output step (%s of %s, %s of resume snapshot), %s free",
                 self.outdir, human(files + snapshot), human(files), fmt, human(snapshot), human(free))
        if free < files + snapshot + MARGIN:  # the writers keep MARGIN free too
            raise UserError(f"output.dir {self.outdir}: No space left on device for the first output step: it "
                            f"needs about {human(files + snapshot)} ({human(files)} of {fmt}, {human(snapshot)} of "
                            f"resume snapshot) but {human(free)} is free; free some space or choose another output.dir")

    def _start(self, store: SnapshotStore) -> dict | None:
        """Rank 0: the snapshot to resume from (checked against this run), else a clean folder; the resolved config."""
        marker = None
        if self.cfg.resume:
            marker = store.check()
            if marker is None:
                log.info("resume=true but %s holds no resume state: starting a new run", self.outdir)
        else:
            store.remove()
        save_resolved(self.cfg, self.outdir)
        return marker

    def run(self) -> dict:
        """Roll out every initial time, write the products and return the metrics document."""
        try:
            return self._run()
        finally:
            self.release()

    def _run(self) -> dict:
        """The run with its writer thread (outputs and snapshots), which is joined on success and on error."""
        with BackgroundWriter(what=f"the outputs in {self.outdir}") as writer:
            return self._run_with(writer)

    def _run_with(self, writer: BackgroundWriter) -> dict:
        run, comm = self.resolved, self.comm
        store = SnapshotStore(self.outdir, self.grid.world, dict(
            members=run.members, inits=[str(run.ds.times[i]) for i in self.plan.init_indices],
            steps=self.plan.lead_steps, output_steps=self.plan.output_steps, grid=[run.ds.nlat, run.ds.nlon],
            channels=run.channels, variables=run.out_vars, format=self.cfg.output.format,
            output_members=self.cfg.output.members), identity=self.identity, writer=writer)
        marker = root_decides(comm, lambda: self._start(store))
        self.grid.world.barrier(tag="start")
        scoring = Scoring(run)
        products = Products(run, member_comm=scoring.comm, identity=self.identity, writer=writer,
                            derived=scoring.derived, block_rows=scoring.block_rows())
        power = PowerSampler(run.device).start()
        t_start = self.tracer.now()  # the rollout's wall time, on the clock of the timed regions it partitions
        member_steps = Rollout(run, self.forecaster, self.perturber, products, scoring,
                               self.model_noise).run_all(store, marker)
        t_end = self.tracer.now()
        self.energy = dict(power.stop().as_dict(), member_steps=member_steps)  # GPU joules (None without NVML)
        doc = self.finish(scoring, products, (t_start, t_end))
        if comm.rank == 0 and not self.cfg.output.keep_resume_state:
            store.remove()
        scoring.close()
        self.grid.close()  # releases the axis communicators and any torch.distributed groups
        return doc

    def finish(self, scoring: Scoring, products: Products, rollout: tuple[float, float]) -> dict:
        """Reduce the scores, write the report (rank 0) and the traces; returns the metrics document.
        ``rollout``: (start, end) of the rollout on the tracer's clock, whose wall time the timings partition."""
        run = self.resolved
        with self.phases.phase("report"):
            scores = scoring.reduce()
            doc = metrics_document(scores, run.channels, self.plan.lead_hours, run.members,
                                   [run.ds.times[i] for i in self.plan.init_indices], self.cfg.scoring.lat_weights)
        if run.lag.groups > 1:  # a lagged ensemble: `members` counts every lag group's (docs/ensembles.md)
            doc["lagged"] = {"initial_times": run.lag.groups, "lag_hours": run.lag.hours,
                             "members_per_initial_time": run.lag.per_group}
        timings = self.grid.world.gather(dict(rank_timings(self.tracer, *rollout), wall=rollout[1] - rollout[0],
                                              group=self.grid.coords["ensemble"], energy=self.energy,
                                              phases=self.phases.as_dict()), root=0,
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
