"""What an ensemble run will do: initial times, lead steps to output, members of each group."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import fail
from ..parallel.split import shard_range
from .config import EnsembleConfig, InitialConditions, parse_lead


def as_hours(t) -> int:
    return int(np.datetime64(t, "h").astype("int64"))


def select_initial_times(ic: InitialConditions, times: np.ndarray, lead_steps: int) -> list[int]:
    """Indices (into the split's ``times``) of the initial conditions, in time order."""
    key = "initial_conditions"
    if len(times) == 0:
        fail(f"{key}.split", "the data split has no samples")
    if ic.times is not None:
        out = []
        for i, t in enumerate(ic.times):
            try:
                want = np.datetime64(t, "h")
            except ValueError:
                fail(f"{key}.times[{i}]", f"'{t}' is not an ISO date-time such as 2006-01-05T00")
            hit = np.nonzero(times == want)[0]
            if not len(hit):
                fail(f"{key}.times[{i}]", f"{t} is not in the '{ic.split}' split ({times[0]} .. {times[-1]}, "
                                          f"{int((times[1] - times[0]).astype(int)) if len(times) > 1 else 6} h steps)")
            out.append(int(hit[0]))
        idx = sorted(set(out))
    else:
        start = np.datetime64(ic.start, "h") if ic.start else times[0]
        end = np.datetime64(ic.end, "h") if ic.end else times[-1]
        every = parse_lead(ic.every, 1, f"{key}.every")  # in hours
        sel = (times >= start) & (times <= end) & ((times - start).astype("int64") % every == 0)
        idx = [int(i) for i in np.nonzero(sel)[0]]
        if not idx:
            fail(f"{key}.start", f"no initial time of the '{ic.split}' split lies in {start} .. {end}")
        if ic.count is not None:
            idx = idx[: ic.count]
    return idx


def member_split(n_members: int, n_groups: int, group: int) -> range:
    """Members of ensemble group ``group``: balanced, the first ``n % k`` groups get one more."""
    if n_members < n_groups:
        fail("ensemble.members", f"{n_members} members cannot be spread over {n_groups} ensemble groups: "
                                 f"use at least {n_groups} members or fewer ranks on the ensemble axis")
    return range(*shard_range(n_members, n_groups, group, "ensemble"))


@dataclass
class RunPlan:
    lead_steps: int
    output_steps: list[int]  # steps written and scored, 0 = the initial state
    init_indices: list[int]
    dt_hours: int

    @property
    def lead_hours(self) -> list[int]:
        return [s * self.dt_hours for s in self.output_steps]


def make_plan(cfg: EnsembleConfig, times: np.ndarray, dt_hours: int) -> RunPlan:
    steps = parse_lead(cfg.forecast.lead_time, dt_hours, "forecast.lead_time")
    every = cfg.forecast.output_every
    out = list(range(0, steps + 1, every))
    if out[-1] != steps:
        out.append(steps)
    return RunPlan(steps, out, select_initial_times(cfg.initial_conditions, times, steps), dt_hours)


def time_tag(t) -> str:
    return str(np.datetime64(t, "h")).replace("-", "").replace(":", "")[:11]


__all__ = ["RunPlan", "as_hours", "make_plan", "member_split", "select_initial_times", "time_tag"]
