"""Lagged ensembles (ensemble.lagged): member k of a lag group is the forecast from k lags earlier at its own lead."""
import json

import netCDF4
import numpy as np
import pytest
from mpi4py import MPI

from ensemble_setup import command, kill_after_snapshot, tiny_config, tiny_dataset

from hpc_fcn.config import ConfigError, dump_yaml
from hpc_fcn.data.era5 import open_split
from hpc_fcn.ensemble.app import EnsembleRun
from hpc_fcn.ensemble.config import EnsembleConfig, MembersConfig
from hpc_fcn.ensemble.plan import Lagging, make_lagging
from hpc_fcn.metrics import lat_weights
from hpc_fcn.schema import DataConfig

INIT = "2002-01-04T00"
SPLIT = "initial_conditions.split=out_of_sample"  # the tiny dataset's year 2002
LAGGED = ["ensemble.lagged=3", "ensemble.lag=12h", "ensemble.members=2", f"initial_conditions.times=[{INIT}]",
          "forecast.lead_time=1d"]
METHODS = {"gaussian": [],
           "bred": ["perturbation.method=bred", "perturbation.bred_cycles=2", "perturbation.bred_steps=1"],
           "stochastic": ["perturbation.amplitude=0.05", "model.stochastic=true", "model.noise_dim=6",
                          "model.noise_memory_hours=24"]}  # AR(1) noise: its state goes on from spin-up to lead 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("lagged") / "data")


def members(outdir, init):
    """(members, channels, leads, lat, lon) and the lag coordinate of the members file of ``init``."""
    stamp = init.replace("-", "")
    with netCDF4.Dataset(outdir / f"forecast_{stamp}_members.nc") as ds:
        x = np.stack([np.asarray(ds[v][:])[:, 0] for v in ("u", "v", "z")], axis=1)
        lag = np.asarray(ds["lag"][:]) if "lag" in ds.variables else None
        return x, lag, {a: ds.getncattr(a) for a in ds.ncattrs()}, ds["u"].coordinates


def run(data, outdir, overrides):
    return EnsembleRun(tiny_config(data, outdir, [SPLIT, *overrides]), MPI.COMM_SELF).run()


@pytest.mark.parametrize("method", list(METHODS))
def test_member_of_lag_group_k_is_the_plain_forecast_from_k_lags_earlier(data, tmp_path, method):
    """Lag 12 h (2 steps), 3 groups of 2 members (member 0 of each group the control): member (k, p) at lead l
    equals member p of a plain run from INIT - 12k h at lead l + 12k h. One member per pass in both runs, so
    every member's arithmetic is the same: equal to the bit."""
    extra = METHODS[method] + ["inference.members_per_pass=1"]
    doc = run(data, tmp_path / "lagged", LAGGED + extra)
    plain_inits = ["2002-01-04T00", "2002-01-03T12", "2002-01-03T00"]
    run(data, tmp_path / "plain", extra + ["ensemble.members=2", f"initial_conditions.times=[{','.join(plain_inits)}]",
                                           "forecast.lead_time=2d"])
    lagged, lag, attrs, coords = members(tmp_path / "lagged", INIT)
    assert lagged.shape[0] == 6 and list(lag) == [0, 0, 12, 12, 24, 24]
    assert attrs["lagged"] == 3 and attrs["lag_hours"] == 12 and attrs["ensemble_size"] == 6
    assert coords == "valid_time lag"
    for k, t in enumerate(plain_inits):
        plain, _, _, _ = members(tmp_path / "plain", t)  # leads 0, 12, ..., 48 h: every 2 steps
        for p in range(2):
            np.testing.assert_array_equal(lagged[2 * k + p], plain[p, :, k:k + 3], err_msg=f"member ({k}, {p})")
    assert doc["members"] == 6 and doc["lagged"] == {"initial_times": 3, "lag_hours": 12,
                                                     "members_per_initial_time": 2}
    if method == "gaussian":  # scored like any ensemble: the RMSE of the 6 members' mean against the truth
        ds = open_split(DataConfig(root=str(data)), "out_of_sample")
        w = lat_weights(ds.lat)[:, None]
        for li, lead in enumerate(doc["lead_hours"]):
            truth = ds.read(int(np.nonzero(ds.times == np.datetime64(INIT, "h") + np.timedelta64(lead, "h"))[0][0]))
            err = lagged[:, :, li].astype(np.float64).mean(axis=0) - truth[:, :lagged.shape[-2]]
            rmse = np.sqrt((w * err ** 2).mean(axis=(-2, -1)))
            # float64 here, float32 sums over a 32 x 64 grid in the run: 1e-5 relative
            np.testing.assert_allclose([doc["scores"]["rmse"][v][li] for v in ("u", "v", "z")], rmse, rtol=1e-5)


def test_without_lag_the_members_file_has_no_lag_coordinate(data, tmp_path):
    run(data, tmp_path, [f"initial_conditions.times=[{INIT}]", "forecast.lead_time=12h"])
    _, lag, attrs, coords = members(tmp_path, INIT)
    assert lag is None and coords == "valid_time" and attrs["lagged"] == 1


def test_missing_earlier_initial_time_is_one_line_naming_the_key(data, tmp_path):
    with pytest.raises(ConfigError) as err:
        run(data, tmp_path, ["ensemble.lagged=2", "ensemble.lag=1d", "initial_conditions.times=[2002-01-01T12]"])
    msg = str(err.value)
    assert msg.startswith("config key 'ensemble.lagged'") and "\n" not in msg and "2001-12-31T12" in msg, msg


@pytest.mark.parametrize("overrides, key", [(["ensemble.lagged=0"], "ensemble.lagged"),
                                            (["ensemble.lagged=2", "ensemble.lag=5x"], "ensemble.lag")])
def test_bad_lag_keys_are_named(data, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_config(data, tmp_path, overrides)


def test_lag_must_be_a_multiple_of_the_model_step():
    times = np.arange(np.datetime64("2006-01-01T00", "h"), np.datetime64("2006-01-05T00", "h"), 6)
    cfg = EnsembleConfig(ensemble=MembersConfig(members=2, lagged=2, lag="9h"))
    with pytest.raises(ConfigError, match=r"ensemble\.lag'.*multiple of the 6 h"):
        make_lagging(cfg, times, 6, [4])
    cfg = EnsembleConfig(ensemble=MembersConfig(members=2, lagged=3))  # the default lag: the data's step
    assert make_lagging(cfg, times, 6, [4]) == Lagging(groups=3, per_group=2, steps=1, dt_hours=6)


def test_lag_groups_of_a_rank_and_the_spin_up_cost():
    lag = Lagging(groups=3, per_group=4, steps=2, dt_hours=6)
    assert [lag.of(j) for j in (0, 3, 4, 11)] == [(0, 0), (0, 3), (1, 0), (2, 3)]
    assert lag.local_groups(range(3, 9)) == [(0, range(3, 4)), (1, range(0, 4)), (2, range(0, 1))]
    assert lag.member_lags() == [0] * 4 + [12] * 4 + [24] * 4
    assert lag.spin_up_member_steps() == 4 * (2 + 4)  # group 1: 2 steps, group 2: 4 steps, 4 members each


def test_killed_lagged_run_resumes_to_identical_outputs(data, tmp_path):
    """Snapshots are taken at output steps, after the spin-up: a run killed in its second initial time resumes
    from every member's state at the run's lead and writes what an uninterrupted run writes."""
    over = ["ensemble.lagged=2", "ensemble.lag=12h", "ensemble.members=2", "initial_conditions.start=2002-01-02T00",
            "initial_conditions.count=3", "forecast.lead_time=3d", "forecast.snapshot_every=1"]
    run(data, tmp_path / "full", over)
    killed = tmp_path / "killed"
    path = tmp_path / "run.yaml"
    path.write_text(dump_yaml(tiny_config(data, killed, [SPLIT, *over, "resume=true"])))
    kill_after_snapshot(command(1, path), killed, 1, 2)
    marker = json.loads((killed / ".resume" / "progress.json").read_text())
    assert marker["init_pos"] >= 1 and marker["step"] >= 2
    doc = run(data, killed, over + ["resume=true"])
    for t in ("2002-01-02T00", "2002-01-03T00", "2002-01-04T00"):
        np.testing.assert_array_equal(members(killed, t)[0], members(tmp_path / "full", t)[0], err_msg=t)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert doc["members"] == 4 and full["scores"] == json.loads((killed / "metrics.json").read_text())["scores"]
