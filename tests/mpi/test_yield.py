"""Communicator with yielding waits (HPC_FCN_YIELD=1, what tools/mpirun.sh sets when the ranks outnumber the cores):
the same results as the blocking collectives, and ranks that wait for a late rank sleep instead of spinning. Compute
slots (on with HPC_FCN_YIELD=1): an ensemble run gives the same bits with them as without."""
import json
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpc_fcn.parallel.comm import MPICommunicator
from hpc_fcn.parallel.testing import shared_tempdir, sub_comm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble_setup import tiny_config, tiny_dataset  # noqa: E402


def test_yielding_collectives_equal_blocking_ones():
    with sub_comm(3) as raw:
        if raw is None:
            return
        plain, yielding = MPICommunicator(raw, "plain"), MPICommunicator(raw, "yield")
        plain.yielding, yielding.yielding = False, True
        r = raw.rank
        x = torch.arange(12, dtype=torch.float32).reshape(3, 4) * (r + 1)
        sizes = [1, 2, 1]
        mine = torch.full((sizes[r], 4), float(r))
        for c in (plain, yielding):
            time.sleep(0.01 * r)  # the ranks arrive one after the other
            c.out = (c.all_reduce(x), c.all_gather(mine, 0, sizes), c.reduce_scatter(x, 1, [1, 2, 1]),
                     c.all_to_all(x, 1, 0, [1, 2, 1], [3, 3, 3]), c.all_reduce(np.array([r]), op="max"),
                     c.allgather(r), c.bcast({"r": r}), c.gather(r))
            c.barrier()
        for a, b in zip(plain.out, yielding.out):   # the same MPI calls on the same data: bitwise equal
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b)
            elif isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)
            else:
                assert a == b


def test_ranks_waiting_for_a_late_rank_sleep():
    with sub_comm(2) as raw:
        if raw is None:
            return
        c = MPICommunicator(raw, "yield")
        c.yielding = True
        c.barrier()
        cpu0 = time.process_time()
        if raw.rank == 0:
            time.sleep(1.0)  # late: rank 1 waits for it in the all-reduce
        total = c.all_reduce(np.ones(4))
        cpu = time.process_time() - cpu0
        np.testing.assert_array_equal(total, np.full(4, 2.0))
        if raw.rank == 1:
            # polls at most every 1 ms: about 1000 wake-ups of some 10 us each, about 0.01 s of CPU, bounded at
            # 0.1 s (a spinning wait burns all of the 1 s a free core gives it)
            assert cpu < 0.1, f"waiting rank used {cpu:.3f} s of CPU in a 1 s wait"


@pytest.mark.skipif(MPI.COMM_WORLD.size < 2, reason="slots share a node between ranks")
def test_ensemble_bit_identical_with_compute_slots(monkeypatch):
    """The tiny stochastic ensemble on every rank of the job (one ensemble group each), with one compute slot for
    the node (the cores taken as 1, so the ranks outnumber them on any machine) and without slots: the same members
    and scores to the bit, as each step's noise and passes compute the same thing whenever they run."""
    import hpc_fcn.parallel.slots as slots_mod
    from hpc_fcn.ensemble.app import EnsembleRun
    world = MPI.COMM_WORLD
    tmp = shared_tempdir("hpc_fcn_slots_test_", lambda p: tiny_dataset(p / "data"))
    monkeypatch.setattr(slots_mod, "node_cores", lambda: 1)
    monkeypatch.setenv("HPC_FCN_YIELD", "1")
    used = {}
    for on in ("0", "1"):
        monkeypatch.setenv("HPC_FCN_SLOTS", on)
        cfg = tiny_config(tmp / "data", tmp / f"slots{on}", ["initial_conditions.count=1", "ensemble.members=6",
                                                             "inference.members_per_pass=1", "model.stochastic=true",
                                                             "model.noise_dim=4"])
        run = EnsembleRun(cfg, world)
        run.run()
        used[on] = (run.forecaster.slots, run.tracer.summary().get("compute_slot/wait", {}).get("count", 0))
    assert used["0"] == (None, 0)
    assert used["1"][0] is not None and used["1"][0].count == 1
    assert used["1"][1] >= 4  # taken once per step (2 days: at least 4 steps)
    world.Barrier()
    if world.rank == 0:
        files = sorted((tmp / "slots0").glob("*.nc"))
        assert len(files) == 3  # members, mean, spread
        for f in files:
            with netCDF4.Dataset(f) as a, netCDF4.Dataset(tmp / "slots1" / f.name) as b:
                for v in ("u", "v", "z"):
                    np.testing.assert_array_equal(np.asarray(a[v][:]), np.asarray(b[v][:]), err_msg=f"{f.name} {v}")
        a, b = (json.loads((tmp / f"slots{on}" / "metrics.json").read_text()) for on in ("0", "1"))
        assert json.dumps(a["scores"]) == json.dumps(b["scores"])  # NaN included
