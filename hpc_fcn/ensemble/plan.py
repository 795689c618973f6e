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


@dataclass(frozen=True)
class Lagging:
    """A lagged ensemble: ``per_group`` members from each of ``groups`` initial times ``steps`` model steps apart.

    Member ``j`` of the run is member ``p`` of lag group ``k`` (``k, p = divmod(j, per_group)``): the forecast
    started ``k`` lags before the run's initial time, its perturbation keyed by (seed, its own initial time,
    ``p``), so it equals member ``p`` of a plain run from that initial time at ``k * steps`` more steps. With
    ``groups == 1`` the run is a plain ensemble.
    """
    groups: int  # ensemble.lagged
    per_group: int  # ensemble.members
    steps: int  # model steps between two lagged initial times
    dt_hours: int

    @property
    def members(self) -> int:
        return self.groups * self.per_group

    @property
    def hours(self) -> int:
        return self.steps * self.dt_hours

    def of(self, member: int) -> tuple[int, int]:
        """(lag group, member within its group) of run member ``member``."""
        return divmod(member, self.per_group)

    def member_lags(self) -> list[int]:
        """Hours from each run member's own initial time to the run's initial time."""
        return [self.of(j)[0] * self.hours for j in range(self.members)]

    def local_groups(self, members: range) -> list[tuple[int, range]]:
        """(lag group, its members within the group) of the run members ``members`` (contiguous), in order."""
        out = []
        for k in range(self.groups):
            lo, hi = max(members.start, k * self.per_group), min(members.stop, (k + 1) * self.per_group)
            if lo < hi:
                out.append((k, range(lo - k * self.per_group, hi - k * self.per_group)))
        return out

    def spin_up_member_steps(self) -> int:
        """Model steps of every member before the run's lead 0 (group k steps ``k * steps`` of them)."""
        return self.per_group * self.steps * self.groups * (self.groups - 1) // 2

    def initial_times(self, init_times) -> list[np.datetime64]:
        """Every lag group's initial time of each of the run's ``init_times``."""
        return [np.datetime64(t, "h") - np.timedelta64(k * self.hours, "h") for t in init_times
                for k in range(self.groups)]

    def source_index(self, times: np.ndarray, init_index: int, k: int) -> int | None:
        """Index (into ``times``) of lag group ``k``'s initial time for the run's ``init_index``; None if absent."""
        want = times[init_index] - np.timedelta64(k * self.hours, "h")
        hit = np.nonzero(times == want)[0]
        return int(hit[0]) if len(hit) else None


def make_lagging(cfg: EnsembleConfig, times: np.ndarray, dt_hours: int, init_indices: list[int]) -> Lagging:
    """The lagging of ``cfg`` (``ensemble.lagged``, ``ensemble.lag``), after checking that every initial time has
    its lagged initial times in the split ``times``."""
    ens = cfg.ensemble
    steps = parse_lead(ens.lag, dt_hours, "ensemble.lag") if ens.lag is not None else 1
    lag = Lagging(ens.lagged, ens.members, steps if ens.lagged > 1 else 0, dt_hours)
    for i in init_indices:
        missing = [k for k in range(1, lag.groups) if lag.source_index(times, i, k) is None]
        if missing:
            t = np.datetime64(times[i], "h")
            first = t - np.timedelta64((lag.groups - 1) * lag.hours, "h")
            fail("ensemble.lagged", f"{lag.groups} lagged initial times {lag.hours} h apart need {first} .. {t}, "
                                    f"but the '{cfg.initial_conditions.split}' split has no "
                                    f"{t - np.timedelta64(missing[0] * lag.hours, 'h')} (it spans {times[0]} .. "
                                    f"{times[-1]}); choose a later initial_conditions.start or a smaller lag")
    return lag


def time_tag(t) -> str:
    return str(np.datetime64(t, "h")).replace("-", "").replace(":", "")[:11]


__all__ = ["Lagging", "RunPlan", "as_hours", "make_lagging", "make_plan", "member_split", "select_initial_times",
           "time_tag"]
