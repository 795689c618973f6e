"""The rollout on 1, 2 and 4 ranks: a NaN names member, step and variable on every rank; snapshots only with resume."""
import sys
from pathlib import Path

import pytest
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble_setup import tiny_config, tiny_dataset  # noqa: E402

from hpc_fcn.ensemble import rollout  # noqa: E402
from hpc_fcn.ensemble.app import EnsembleRun  # noqa: E402
from hpc_fcn.ensemble.snapshot import SnapshotStore  # noqa: E402
from hpc_fcn.parallel.testing import shared_tempdir  # noqa: E402

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size != 4, reason="sub-communicators of 1, 2 and 4 ranks")
LAYOUTS = {1: [], 2: ["parallel.ensemble=2"], 4: ["parallel.h=2", "parallel.ensemble=2"]}


@pytest.fixture(scope="module")
def shared_tmp():
    return shared_tempdir("hpc_fcn_rollout_", lambda p: tiny_dataset(p / "data"))


def _sub(n):
    world = MPI.COMM_WORLD
    return world.Split(0 if world.rank < n else MPI.UNDEFINED, world.rank)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_nan_names_member_step_and_variable_on_every_rank(shared_tmp, monkeypatch, n):
    plain = rollout.Rollout.step
    calls = {}

    def poisoned(self, x):
        y = plain(self, x)
        calls[id(self)] = calls.get(id(self), 0) + 1
        if calls[id(self)] == 3 and 2 in self.run.my_members:
            y[2 - self.run.my_members.start, 1] = float("nan")  # member 2, variable v, step 3
        return y

    monkeypatch.setattr(rollout.Rollout, "step", poisoned)
    comm = _sub(n)
    if comm != MPI.COMM_NULL:
        cfg = tiny_config(shared_tmp / "data", shared_tmp / f"nan{n}", ["initial_conditions.count=1"] + LAYOUTS[n])
        with pytest.raises(rollout.NonFiniteForecast) as err:
            EnsembleRun(cfg, comm).run()
        assert "initial time 2002010" in str(err.value)
        assert "member 2, step 3 (lead 18 h), variable v" in str(err.value), str(err.value)
        comm.Free()


@pytest.mark.parametrize("n", [1, 2, 4])
def test_snapshots_only_with_resume_at_snapshot_every(shared_tmp, monkeypatch, n):
    saved = []
    plain = SnapshotStore.save

    def spy(self, progress, *args, **kwargs):
        saved.append(progress.get("step"))
        return plain(self, progress, *args, **kwargs)

    monkeypatch.setattr(SnapshotStore, "save", spy)
    comm = _sub(n)
    if comm == MPI.COMM_NULL:
        return
    common = ["initial_conditions.count=1", "forecast.snapshot_every=2"] + LAYOUTS[n]
    EnsembleRun(tiny_config(shared_tmp / "data", shared_tmp / f"plain{n}", common), comm).run()
    assert saved == [] and not (shared_tmp / f"plain{n}" / ".resume").exists()
    EnsembleRun(tiny_config(shared_tmp / "data", shared_tmp / f"snap{n}",
                            common + ["resume=true", "output.keep_resume_state=true"]), comm).run()
    assert saved == [2, 6, -1]  # output steps 0, 2, 4, 6, 8: after the 2nd and the 4th, and at the end
    assert (shared_tmp / f"snap{n}" / ".resume" / "progress.json").is_file()
    comm.Free()
