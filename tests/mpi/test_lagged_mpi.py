"""Lagged ensembles on 4 ranks: every lag group's members and the scores do not depend on the layout."""
import json
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble_setup import tiny_config, tiny_dataset  # noqa: E402

from hpc_fcn.ensemble.app import EnsembleRun  # noqa: E402
from hpc_fcn.parallel.testing import shared_tempdir  # noqa: E402

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size != 4, reason="layouts are laid out for 4 ranks")

# 3 lag groups 12 h apart, 2 members each (member 0 of each group its control): 6 members
LAGGED = ["initial_conditions.split=out_of_sample", "ensemble.lagged=3", "ensemble.lag=12h", "ensemble.members=2",
          "initial_conditions.times=[2002-01-04T00]", "forecast.lead_time=1d", "perturbation.amplitude=0.05"]


@pytest.fixture(scope="module")
def shared_tmp():
    return shared_tempdir("hpc_fcn_lagged_", lambda p: tiny_dataset(p / "data"))


def members_of(outdir):
    with netCDF4.Dataset(Path(outdir) / "forecast_20020104T00_members.nc") as ds:
        return np.stack([np.asarray(ds[v][:]) for v in ("u", "v", "z")]), np.asarray(ds["lag"][:])


def test_lagged_members_and_scores_identical_across_layouts(shared_tmp):
    """ens4: the 6 members split 2, 2, 1, 1, so lag groups straddle ranks; h2e2: groups of 3 members, each
    holding two lag groups (the spin-up steps a part of a rank's batch), one member per pass."""
    world = MPI.COMM_WORLD
    solo = world.Split(0 if world.rank == 0 else MPI.UNDEFINED, world.rank)
    layouts = {"serial": (solo, []), "ens4": (world, ["parallel.ensemble=4"]),
               "h2e2": (world, ["parallel.h=2", "inference.members_per_pass=1"]),
               "w2m2": (world, ["parallel.w=2", "parallel.matmul=2", "parallel.ensemble=1"])}
    for name, (comm, ov) in layouts.items():
        if comm != MPI.COMM_NULL:
            EnsembleRun(tiny_config(shared_tmp / "data", shared_tmp / name, LAGGED + ov), comm).run()
    if solo != MPI.COMM_NULL:
        solo.Free()
    world.Barrier()
    if world.rank != 0:
        return
    ref, lag = members_of(shared_tmp / "serial")
    assert ref.shape[1] == 6 and list(lag) == [0, 0, 12, 12, 24, 24]
    serial = json.loads((shared_tmp / "serial" / "metrics.json").read_text())
    assert serial["members"] == 6
    for name in layouts.keys() - {"serial"}:
        got, got_lag = members_of(shared_tmp / name)
        assert list(got_lag) == list(lag)
        # another layout sums the FFTs and reductions in another order: fp32 round-off, as test_ensemble_mpi
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=name)
        doc = json.loads((shared_tmp / name / "metrics.json").read_text())
        assert doc["members"] == 6
        for score in ("rmse", "crps", "spread"):
            for var in ("u", "v", "z"):
                a = np.array(doc["scores"][score][var], dtype=float)
                b = np.array(serial["scores"][score][var], dtype=float)
                # scores of members equal to 1e-5 (above), squared/differenced and averaged: 1e-4
                np.testing.assert_allclose(a, b, rtol=1e-4, equal_nan=True, err_msg=f"{name} {score} {var}")
