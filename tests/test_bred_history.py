"""Bred vectors at a split's first initial times: the earlier analyses come from another split's year file,
found by time (hpc_fcn.data.analyses), never across a gap between year files."""
import numpy as np
import pytest
import xarray as xr
from ensemble_setup import tiny_config, tiny_dataset
from helpers_layout import write_layout
from mpi4py import MPI

from hpc_fcn.data.analyses import Analyses
from hpc_fcn.data.era5 import DataError, open_split
from hpc_fcn.ensemble.app import EnsembleRun
from hpc_fcn.ensemble.perturb import bred_analysis_times, missing_bred_history
from hpc_fcn.runtime import UserError
from hpc_fcn.schema import DataConfig

# whole years of daily samples: 2000 (leap, 366 days) ends on 2000-12-31, the day before 2001 begins
YEARS = dict(steps=366, dt_hours=24, channels=["u", "v", "z"], rows=33, cols=64)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same two years, split at the new year (the published layout's train / test) and in one split."""
    base = tmp_path_factory.mktemp("bred_history")
    write_layout(base / "split", splits={"train": [2000], "out_of_sample": [2001]}, **YEARS)
    write_layout(base / "joined", splits={"train": [2000], "out_of_sample": [2000, 2001]}, **YEARS)
    return base / "split", base / "joined"


def analyses_of(root, split="out_of_sample"):
    cfg = DataConfig(root=str(root))
    return Analyses(cfg, split, root, open_split(cfg, split))


def test_analyses_are_found_by_time_in_any_split(layouts, tmp_path):
    split, _ = layouts
    a = analyses_of(split)
    assert a.has("2001-01-02T00") and a.has("2000-12-31T00") and not a.has("1999-12-31T00")
    train = open_split(DataConfig(root=str(split)), "train")
    np.testing.assert_array_equal(a.read("2000-12-31T00", slice(3, 9), slice(0, 64), normalise=True),
                                  train.read(train.index_of("2000-12-31T00"), slice(3, 9), slice(0, 64),
                                             normalise=True))
    with pytest.raises(DataError, match="analysis at 1999-12-31T00"):
        a.read("1999-12-31T00")
    assert bred_analysis_times("2001-01-01T00", 3, 2, 24) == [np.datetime64(t, "h") for t in
                                                              ("2000-12-26T00", "2000-12-28T00", "2000-12-30T00")]
    assert missing_bred_history(a, ["2001-01-01T00", "2001-01-05T00"], 3, 2, 24) is None
    # 200 cycles of 2 days reach back to 1999-11-28, before the data: the earliest is reported
    assert missing_bred_history(a, ["2001-01-01T00"], 200, 2, 24) == (np.datetime64("2001-01-01T00", "h"),
                                                                       np.datetime64("1999-11-28T00", "h"))
    a.close()
    # the tiny dataset's years hold 40 six-hourly steps: 2000-12-31T18 is in no split (no bridging of the gap)
    tiny = analyses_of(tiny_dataset(tmp_path / "tiny"))
    assert tiny.has("2001-01-01T06") and not tiny.has("2000-12-31T18") and tiny.has("2000-01-10T18")


def test_bred_members_at_a_splits_first_time_equal_those_with_the_history_in_the_same_split(layouts, tmp_path):
    """Members bred at 2001-01-01 from the train split's 2000-12-30/31 analyses equal those bred from the same
    analyses inside one split; at the data's very first time the run stops before any output, in one line."""
    keys = ["perturbation.method=bred", "perturbation.bred_cycles=2", "perturbation.bred_steps=1",
            "perturbation.amplitude=0.2", "initial_conditions.start=2001-01-01T00", "initial_conditions.count=1",
            "forecast.output_every=1"]
    members = []
    for root in layouts:
        out = tmp_path / root.name
        EnsembleRun(tiny_config(root, out, keys), MPI.COMM_SELF).run()
        with xr.open_dataset(out / "forecast_20010101T00_members.nc") as nc:
            members.append(nc["u"].values.copy())
    assert members[0].shape[0] == 5 and np.isfinite(members[0]).all()
    np.testing.assert_array_equal(members[0], members[1])
    assert np.abs(members[0][1:] - members[0][:1]).max() > 0  # bred members differ from the control
    first = keys[:4] + ["initial_conditions.start=2000-01-01T00", "initial_conditions.count=1"]
    with pytest.raises(UserError, match=r"^bred vectors at 2000-01-01T00 need the analysis at 1999-12-30T00 .*"
                                        r"choose a later initial_conditions.start$"):
        EnsembleRun(tiny_config(layouts[1], tmp_path / "first", first), MPI.COMM_SELF).run()
    assert not list((tmp_path / "first").glob("forecast_*"))
