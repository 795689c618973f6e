"""Communicator with yielding waits (HPC_FCN_YIELD=1, what tools/mpirun.sh sets when the ranks outnumber the cores):
the same results as the blocking collectives, and ranks that wait for a late rank sleep instead of spinning."""
import time

import numpy as np
import torch

from hpc_fcn.parallel.comm import MPICommunicator
from hpc_fcn.parallel.testing import sub_comm


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
