"""hpc_fcn.ensemble.plan: which initial times an ensemble run forecasts from."""
from __future__ import annotations

import numpy as np
import pytest

from hpc_fcn.config import ConfigError
from hpc_fcn.ensemble.config import InitialConditions
from hpc_fcn.ensemble.plan import member_split, select_initial_times

TIMES = np.arange(np.datetime64("2006-01-01T00", "h"), np.datetime64("2006-01-10T00", "h"), 6)  # 36 samples


def test_a_list_of_times_is_taken_whole_whatever_count_says():
    ic = InitialConditions(times=["2006-01-03T00", "2006-01-01T00", "2006-01-02T00"], count=1)
    assert select_initial_times(ic, TIMES, 4) == [0, 4, 8]


def test_a_range_is_cut_to_count():
    assert select_initial_times(InitialConditions(every="24h", count=2), TIMES, 4) == [0, 4]
    assert select_initial_times(InitialConditions(every="2d", count=None), TIMES, 4) == [0, 8, 16, 24, 32]
    ic = InitialConditions(start="2006-01-02T00", end="2006-01-03T12", every="12h", count=None)
    assert select_initial_times(ic, TIMES, 4) == [4, 6, 8, 10]


def test_a_time_outside_the_split_names_the_entry():
    with pytest.raises(ConfigError, match=r"initial_conditions\.times\[1\]"):
        select_initial_times(InitialConditions(times=["2006-01-01T00", "2007-01-01T00"]), TIMES, 4)


def test_members_are_split_into_contiguous_balanced_groups():
    groups = [member_split(10, 4, g) for g in range(4)]
    assert [len(g) for g in groups] == [3, 3, 2, 2]
    assert [m for g in groups for m in g] == list(range(10))
    with pytest.raises(ConfigError, match="ensemble.members"):
        member_split(3, 4, 0)
