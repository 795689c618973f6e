"""The rollout: perturbed members stepped from each initial time to the last lead, with resume snapshots.

Each rank steps its ensemble group's members on its window. In a lagged ensemble (``ensemble.lagged``) the
members of lag group k start from the initial time k lags earlier and are stepped those k lags' steps before
the run's lead 0 (the spin-up: the groups that still need steps stepped together), so every member is
valid at the same times. At every output step the products are written and the scores added. With
``resume`` set, every ``forecast.snapshot_every`` output steps (and after each initial time) a snapshot of
the members and the score sums is saved, keyed by member index, so an interrupted run resumes where it
stopped, on any layout.

The loop does not wait for the host: members cross to it (when written or scored) by copies that run while
the next steps compute; the writes and snapshots run on the writer thread, and a lead's scores are added at
the next output step (or before a snapshot, and at the end), when its copy has long ended.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..io.backend import DamagedOutput
from ..runtime import UserError, failure_record, raise_first_failure
from ..memwatch import release_free_heap
from .perturb import Perturber, bred_analysis_times, breed
from .plan import as_hours, time_tag
from .products import Products
from .resolve import ResolvedRun
from .snapshot import SCORES, SnapshotStore, damaged
from .scoring import Scoring

# below this much state per rank a step's heap is small and malloc_trim (about 5 ms, paid every step) costs more than
# it returns: at the built-in size 13 members are 8.5 MB and a step 0.13 s; one member at 721 x 1440 is 83 MB
TRIM_STATE_BYTES = 32 << 20

log = logging.getLogger("hpc_fcn")


class Rollout:
    """The loop over initial times and steps of one run."""

    def __init__(self, run: ResolvedRun, forecaster, perturber: Perturber, products: Products, scoring: Scoring,
                 model_noise=None):
        self.run = run
        self.model_noise = model_noise  # a stochastic model's ModelNoise (None: deterministic)
        self.forecaster = forecaster
        self.perturber = perturber
        self.products = products
        self.scoring = scoring

    def step(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.forecaster.step(x, noise)

    def noise(self, init_hours: int, step: int, groups: list[tuple[int, range]] | None = None
              ) -> torch.Tensor | None:
        """The stochastic model's noise for the run's model step ``step`` (None: deterministic) of ``groups``
        ((lag group, members within it), by default this rank's), each keyed by its own initial time and step."""
        if self.model_noise is None:
            return None
        run, lag = self.run, self.run.lag
        groups = lag.local_groups(run.my_members) if groups is None else groups
        with run.tracer.region("model_noise", "compute"):
            parts = [self.model_noise.sample(init_hours - k * lag.hours, members, step + k * lag.steps, run.device)
                     for k, members in groups]
            if not parts:
                return self.model_noise.sample(init_hours, [], step, run.device)
            return parts[0] if len(parts) == 1 else torch.cat(parts)

    # ---- initial states -----------------------------------------------------------------------
    def initial_state(self, init_index: int, x0_phys: np.ndarray, bar=None) -> torch.Tensor:
        """(m_local, C, r, c) members of this rank at the run's lead 0, normalised units: the perturbed initial
        condition; in a lagged ensemble each lag group's, from its own initial time, stepped to lead 0."""
        run, lag = self.run, self.run.lag
        if lag.groups == 1:
            return self.perturbed(init_index, x0_phys, run.my_members)
        parts = []
        for k, members in lag.local_groups(run.my_members):
            index = init_index if k == 0 else lag.source_index(run.ds.times, init_index, k)
            if index is None:  # the run's initial times were checked (plan.make_lagging); another caller's
                raise UserError(f"config key 'ensemble.lagged': {run.ds.times[init_index]} has no initial time "
                                f"{k * lag.hours} h earlier in the data split; choose later initial times")
            if k == 0:
                x0 = x0_phys
            else:
                with run.tracer.region("io.read", "io"):
                    x0 = run.ds.read(index, run.rows, run.cols)
            parts.append(self.perturbed(index, x0, members))
        return self.spin_up(torch.cat(parts), as_hours(run.ds.times[init_index]), bar)

    def perturbed(self, init_index: int, x0_phys: np.ndarray, members: range) -> torch.Tensor:
        """(len(members), C, r, c) perturbed members (indices within their lag group) of initial time
        ``init_index``, normalised units."""
        run = self.run
        init_hours = as_hours(run.ds.times[init_index])
        x0 = run.ds.normalise(torch.from_numpy(x0_phys).to(run.device))
        with run.tracer.region("perturbation", "compute"):
            if run.cfg.perturbation.method != "bred":
                return self.perturber.perturb(x0, init_hours, members)  # noise moves to x0's device
            return self.bred_state(x0, init_index, init_hours, members)

    def spin_up(self, state: torch.Tensor, init_hours: int, bar=None) -> torch.Tensor:
        """Step each lag group of this rank's members ``state`` from its own initial time to the run's lead 0
        (group k: k lags of steps, the last ones). At each spin-up step the groups that still need steps are
        stepped in one batch: they are the last of the rank's members, which are ordered by lag group."""
        run, lag = self.run, self.run.lag
        total = (lag.groups - 1) * lag.steps
        groups, first = [], 0  # (lag group, members within it, position of its first member in ``state``)
        for k, members in lag.local_groups(run.my_members):
            groups.append((k, members, first))
            first += len(members)
        for i in range(total):
            left = total - i  # spin-up steps left, this one included: group k steps when k * lag.steps >= left
            active = [(k, members, at) for k, members, at in groups if k * lag.steps >= left]
            if active:
                noise = self.noise(init_hours, 1 - left, [(k, m) for k, m, _ in active])
                at = active[0][2]
                with run.tracer.region("forecast.spin_up", "compute"):
                    state[at:] = self.step(state[at:], noise)
            if bar is not None:
                bar.update(lag.per_group * sum(k * lag.steps >= left for k in range(lag.groups)))
        return state

    def bred_state(self, x0: torch.Tensor, init_index: int, init_hours: int, members: range) -> torch.Tensor:
        run = self.run
        pc, device = run.cfg.perturbation, run.device
        times = bred_analysis_times(run.ds.times[init_index], pc.bred_cycles, pc.bred_steps, run.ds.dt_hours)
        amp = self.perturber.amp
        seeds = torch.stack([self.perturber.initial_noise(init_hours, m, device) for m in members])
        ctrl = [self.perturber.is_control(m) for m in members]

        def analysis(c: int) -> torch.Tensor:  # by time: at a split's first times from another split's file
            return torch.from_numpy(run.analyses.read(times[c], run.rows, run.cols, normalise=True)).to(device)

        def global_rms(d: torch.Tensor) -> torch.Tensor:
            local = d.double().pow(2).sum(dim=(-2, -1))
            if run.grid.spatial.size > 1:
                local = run.grid.spatial.all_reduce(local, tag="bred_norm")
            return (local / (run.ds.nlat * run.ds.nlon)).sqrt().float()[..., None, None]

        if not len(members):
            return x0.new_zeros((0,) + tuple(x0.shape))
        delta = breed(analysis, seeds, self.step, pc.bred_cycles, pc.bred_steps, amp, global_rms)
        keep = torch.tensor([0.0 if c else 1.0 for c in ctrl], device=device).view(-1, 1, 1, 1)
        return x0.unsqueeze(0) + delta * keep

    # ---- the loop -----------------------------------------------------------------------------
    def states(self, state: torch.Tensor, first: int, bar=None, finite: "FiniteFlags | None" = None,
               init_hours: int = 0):
        """Step the members ``state`` from step ``first`` to the last lead, yielding (step, state) at each of the
        plan's output steps (the one stepping loop: the app's and :mod:`.tune`'s). ``init_hours`` keys a
        stochastic model's noise."""
        run, plan = self.run, self.run.plan
        for s in range(first, plan.lead_steps + 1):
            if s > 0:
                if state.nelement() * state.element_size() >= TRIM_STATE_BYTES:
                    release_free_heap()  # what reading, output and scoring freed: the step's peak is the step's own
                with self.forecaster.slot():  # the noise and the passes wait on no other rank: one compute slot
                    noise = self.noise(init_hours, s)
                    with run.tracer.region("forecast.step", "compute"):
                        state = self.step(state, noise)
                if bar is not None:
                    bar.update(run.members)
            if finite is not None:
                finite.add(s, state)
            if s in plan.output_steps:
                yield s, state

    def run_all(self, store: SnapshotStore, marker: dict | None) -> int:
        """Every initial time, from the snapshot ``marker`` names (rank 0 checked it) when there is one; returns
        the member-steps of the initial times this call started (for energy per member-step)."""
        run, plan = self.run, self.run.plan
        n = len(plan.init_indices)
        start_init, state = 0, None
        if marker is not None:
            state, scores = store.load(marker, run.my_members, run.rows, run.cols, len(run.channels))
            start_init = int(marker["init_pos"])
            try:
                self.scoring.restore(scores)
            except (ValueError, KeyError, TypeError) as exc:  # arrays that do not describe this run's sums
                raise damaged(store.dir / f"slot{marker['slot']}" / SCORES, str(exc)) from None
            step = int(marker.get("step", -1))
            if start_init >= n:
                log.info("resuming after the last initial time: only the scores remain to be written")
            elif step >= 0:
                log.info("resuming at initial time %d of %d after step %d of %d", start_init + 1, n, step,
                         plan.lead_steps)
            else:
                log.info("resuming at initial time %d of %d, from its start", start_init + 1, n)
        bar = self._progress_bar(start_init, marker)
        try:
            for k in range(start_init, n):
                step = marker.get("step", -1) if (marker is not None and k == start_init) else -1
                self.run_initial_time(k, store, bar, (step, state) if step >= 0 else None)
                if run.cfg.resume:
                    self.snapshot(store, {"init_pos": k + 1, "step": -1}, None)
            store.complete()
        finally:
            store.abandon()  # after an error: this rank's snapshot in flight ends before the writer is closed
            if bar is not None:
                bar.close()  # an error message then starts on a line of its own
        return self.member_steps_per_initial_time() * max(n - start_init, 0)

    def member_steps_per_initial_time(self) -> int:
        """Model steps of every member of one initial time, a lagged ensemble's spin-up included."""
        return self.run.members * self.run.plan.lead_steps + self.run.lag.spin_up_member_steps()

    def snapshot(self, store: SnapshotStore, progress: dict, state: torch.Tensor | None, on_complete=None) -> None:
        """Start a resume snapshot: this rank's members and window, and the score sums over the scoring ranks
        (written in the background; ``on_complete``: see :meth:`SnapshotStore.save`)."""
        run = self.run
        with run.tracer.region("snapshot", "io"):
            scores = self.scoring.summed()
            store.save(progress, state if run.scorer else None, run.my_members, run.rows, run.cols, scores,
                       on_complete)

    def _progress_bar(self, start_init: int, marker):
        run = self.run
        if run.grid.world.rank != 0 or not run.cfg.progress:
            return None
        from tqdm import tqdm
        per_init = self.member_steps_per_initial_time()
        total = len(run.plan.init_indices) * per_init
        done = start_init * per_init
        if marker is not None and marker.get("step", -1) >= 0:
            done += run.lag.spin_up_member_steps() + marker["step"] * run.members
        return tqdm(total=total, initial=done, unit="member-step", desc="ensemble", dynamic_ncols=True,
                    smoothing=0.1, mininterval=1.0)

    def run_initial_time(self, k: int, store: SnapshotStore, bar, resume) -> None:
        """One initial time; ``resume``: (step, state) of the snapshot to continue from, or None."""
        run, plan, ds = self.run, self.run.plan, self.run.ds
        init_index = plan.init_indices[k]
        init_time = ds.times[init_index]
        init_hours = as_hours(init_time)
        tag = time_tag(init_time)
        with run.tracer.region("io.read", "io"):
            x0 = ds.read(init_index, run.rows, run.cols)
        if resume is not None:
            step, state = resume
            state, first = state.to(run.device), step + 1
            lead_done = plan.output_steps.index(step) + 1
        else:
            state, first, lead_done = self.initial_state(init_index, x0, bar), 0, None
        try:
            self.products.open(init_time, lead_done)
        except DamagedOutput as exc:
            raise damaged(exc.path, exc.why, store.dir) from None
        need_host = bool(run.cfg.output.members or self.scoring.needs_members)
        snap_every = run.cfg.forecast.snapshot_every
        finite = FiniteFlags(run.grid.world, run.my_members, run.channels, run.plan.dt_hours, tag)
        complete, scored = None, _Deferred(self.scoring, init_index, x0, self.products)
        try:
            for s, state in self.states(state, first, bar, finite, init_hours):
                finite.check(self.products.take_write_error())  # and an earlier output's write, agreed at once
                li = plan.output_steps.index(s)
                phys = ds.denormalise(state)
                host = None
                if need_host:
                    with run.tracer.region("io.to_host", "io"):
                        host = self.products.buffers.copy(phys.float())
                self.products.write(li, phys, host, agreed=True)
                scored.flush()  # the previous output step's
                scored.hold(li, s, host)
                if run.cfg.resume and s < plan.lead_steps and (li + 1) % snap_every == 0:
                    scored.flush()
                    self.snapshot(store, {"init_pos": k, "step": s, "leads_complete": li + 1}, state,
                                  on_complete=lambda n=li + 1: self.products.record_leads(n))
            scored.flush()
            store.complete()  # before the outputs are closed: its on_complete records their leads
            complete = len(plan.output_steps)
        finally:
            scored.drop()
            self.products.close(complete)


class _Deferred:
    """The scores (and probability products) of one output step, added later (collective): by then its members'
    host copy has ended."""

    def __init__(self, scoring: Scoring, init_index: int, x0: np.ndarray, products: Products):
        self.scoring, self.init_index, self.x0, self.products = scoring, init_index, x0, products
        self._held = None

    def hold(self, li: int, step: int, host) -> None:
        self._held = (li, step, host) if host is not None else None

    def flush(self) -> None:
        if self._held is None:
            return
        li, step, host = self._held
        self._held = None
        try:
            fields = self.scoring.add(li, step, self.init_index, host.numpy(), self.x0)
            if fields is not None:
                self.products.write_derived(li, fields)
        finally:
            host.release()

    def drop(self) -> None:
        if self._held is not None:
            self._held[2].release()
            self._held = None


class FiniteFlags:
    """NaN/Inf checks without a host sync per step: per-step (member, channel) flags kept on the device.

    Read at output steps; the verdict is shared over ``comm`` so every rank stops with the same message.
    """

    def __init__(self, comm, members: range, channels: list[str], dt_hours: int, init_tag: str):
        self.comm = comm
        self.members, self.channels, self.dt, self.tag = members, channels, dt_hours, init_tag
        self._flags: list[tuple[int, torch.Tensor]] = []

    def add(self, step: int, x: torch.Tensor) -> None:
        if x.shape[0]:
            self._flags.append((step, torch.isfinite(x).flatten(2).all(dim=-1)))

    def check(self, write_error: BaseException | None = None) -> None:
        """Read the flags (one host copy) and raise, on every rank, naming the first non-finite member, step and
        variable (collective). ``write_error``: this rank's writer-thread error, agreed on in the same
        allgather (one collective per output step, not two); raised first, on every rank."""
        bad = None
        if self._flags:
            flags = torch.stack([f for _, f in self._flags])
            steps = [s for s, _ in self._flags]
            if not bool(flags.all()):
                i, m, c = (~flags).nonzero()[0].tolist()
                bad = (steps[i], self.members[m], self.channels[c])
        self._flags = []
        shared = self.comm.allgather((bad, failure_record(write_error)))
        raise_first_failure([w for _, w in shared])
        found = [b for b, _ in shared if b is not None]
        if found:
            step, member, var = min(found, key=lambda b: (b[0], b[1]))
            raise NonFiniteForecast(f"the forecast became non-finite (NaN/Inf): initial time {self.tag}, "
                                    f"member {member}, step {step} (lead {step * self.dt} h), variable {var}")


class NonFiniteForecast(UserError):
    """A member's state became NaN or Inf (raised alike on every rank)."""
