"""The rollout: perturbed members stepped from each initial time to the last lead, with resume snapshots.

Each rank steps its ensemble group's members on its window. At every output step the products are
written and the scores added; after it (and after each initial time) a snapshot of the state and the
score accumulators is saved, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..runtime import UserError
from .perturb import Perturber, breed
from .plan import as_hours, time_tag
from .products import Products
from .resolve import ResolvedRun
from .resume import ResumeStore
from .scoring import Scoring

log = logging.getLogger("hpc_fcn")


class Rollout:
    """The loop over initial times and steps of one run."""

    def __init__(self, run: ResolvedRun, forecaster, perturber: Perturber, products: Products, scoring: Scoring):
        self.run = run
        self.forecaster = forecaster
        self.perturber = perturber
        self.products = products
        self.scoring = scoring

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return self.forecaster.step(x)

    # ---- initial states -----------------------------------------------------------------------
    def check_finite(self, x: torch.Tensor, step: int, init_tag: str) -> None:
        if bool(torch.isfinite(x).all()):
            return
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        member = self.run.my_members[bad[0]]
        raise RuntimeError(f"the forecast became non-finite (NaN/Inf): initial time {init_tag}, member {member}, "
                           f"step {step} (lead {step * self.run.plan.dt_hours} h), "
                           f"variable {self.run.channels[bad[1]]}")

    def initial_state(self, init_index: int, x0_phys: np.ndarray) -> torch.Tensor:
        """(m_local, C, r, c) perturbed members of this rank's group, normalised units."""
        run = self.run
        init_hours = as_hours(run.ds.times[init_index])
        x0 = run.ds.normalise(torch.from_numpy(x0_phys).to(run.device))
        with run.tracer.region("perturbation", "compute"):
            if run.cfg.perturbation.method != "bred":
                return self.perturber.perturb(x0, init_hours, run.my_members)  # noise moves to x0's device
            return self.bred_state(x0, init_index, init_hours)

    def bred_state(self, x0: torch.Tensor, init_index: int, init_hours: int) -> torch.Tensor:
        run = self.run
        pc, device = run.cfg.perturbation, run.device
        back = pc.bred_cycles * pc.bred_steps
        if init_index < back:
            raise UserError(f"bred vectors need {back} earlier analyses ({pc.bred_cycles} cycles x {pc.bred_steps} "
                            f"steps) before {run.ds.times[init_index]}; choose a later initial time")
        amp = self.perturber.amp
        seeds = torch.stack([self.perturber.initial_noise(init_hours, m, device) for m in run.my_members])
        ctrl = [self.perturber.is_control(m) for m in run.my_members]

        def analysis(c: int) -> torch.Tensor:
            idx = init_index - back + c * pc.bred_steps
            return torch.from_numpy(run.ds.read(idx, run.rows, run.cols, normalise=True)).to(device)

        def global_rms(d: torch.Tensor) -> torch.Tensor:
            local = d.double().pow(2).sum(dim=(-2, -1))
            if run.grid.spatial.size > 1:
                local = run.grid.spatial.all_reduce(local, tag="bred_norm")
            return (local / (run.ds.nlat * run.ds.nlon)).sqrt().float()[..., None, None]

        if not len(run.my_members):
            return x0.new_zeros((0,) + tuple(x0.shape))
        delta = breed(analysis, seeds, self.step, pc.bred_cycles, pc.bred_steps, amp, global_rms)
        keep = torch.tensor([0.0 if c else 1.0 for c in ctrl], device=device).view(-1, 1, 1, 1)
        return x0.unsqueeze(0) + delta * keep

    # ---- the loop -----------------------------------------------------------------------------
    def run_all(self, store: ResumeStore, marker: dict | None) -> int:
        """Every initial time, from the snapshot ``marker`` names (rank 0 checked it) when there is one; returns
        the member-steps of the initial times this call started (for energy per member-step)."""
        run, plan = self.run, self.run.plan
        n = len(plan.init_indices)
        start_init, payload = 0, None
        if marker is not None:
            payload = store.load(marker)
            start_init = int(marker["init_pos"])
            self.scoring.accumulators = payload["accs"]
            step = int(marker.get("step", -1))
            if start_init >= n:
                log.info("resuming after the last initial time: only the scores remain to be written")
            elif step >= 0:
                log.info("resuming at initial time %d of %d after step %d of %d", start_init + 1, n, step,
                         plan.lead_steps)
            else:
                log.info("resuming at initial time %d of %d, from its start", start_init + 1, n)
        bar = self._progress_bar(start_init, payload)
        try:
            for k in range(start_init, n):
                resume_payload = payload if (payload is not None and payload.get("step", -1) >= 0
                                             and k == start_init) else None
                self.run_initial_time(k, store, bar, resume_payload)
                store.save({"init_pos": k + 1, "step": -1}, {"accs": self.scoring.accumulators})
        finally:
            if bar is not None:
                bar.close()  # an error message then starts on a line of its own
        return run.members * plan.lead_steps * max(n - start_init, 0)

    def _progress_bar(self, start_init: int, payload):
        run = self.run
        if run.comm.rank != 0 or not run.cfg.progress:
            return None
        from tqdm import tqdm
        total = len(run.plan.init_indices) * run.plan.lead_steps * run.members
        done = start_init * run.plan.lead_steps * run.members
        if payload is not None and payload.get("step", -1) >= 0:
            done += payload["step"] * run.members
        return tqdm(total=total, initial=done, unit="member-step", desc="ensemble", dynamic_ncols=True,
                    smoothing=0.1, mininterval=1.0)

    def run_initial_time(self, k: int, store: ResumeStore, bar, payload) -> None:
        run, plan, ds = self.run, self.run.plan, self.run.ds
        init_index = plan.init_indices[k]
        init_time = ds.times[init_index]
        tag = time_tag(init_time)
        with run.tracer.region("io.read", "io"):
            x0 = ds.read(init_index, run.rows, run.cols)
        if payload is not None:
            state, first = payload["state"].to(run.device), payload["step"] + 1
            lead_done = plan.output_steps.index(payload["step"]) + 1
        else:
            state, first, lead_done = self.initial_state(init_index, x0), 0, None
        files = self.products.writers(init_time, lead_done)
        try:
            for s in range(first, plan.lead_steps + 1):
                if s > 0:
                    with run.tracer.region("forecast.step", "compute"):
                        state = self.step(state)
                    if bar is not None:
                        bar.update(run.members)
                self.check_finite(state, s, tag)
                if s in plan.output_steps:
                    li = plan.output_steps.index(s)
                    phys = ds.denormalise(state).cpu().numpy()
                    self.products.write(li, phys, files)
                    self.scoring.add(li, s, init_index, phys, x0)
                    if s < plan.lead_steps:
                        store.save({"init_pos": k, "step": s},
                                   {"state": state.cpu(), "step": s, "accs": self.scoring.accumulators})
        except BaseException:
            self.products.abandon(files)
            raise
        self.products.close(files)
