"""Communicator: host-array and object collectives against explicit results, and the bytes the tracer records.

Every rank can rebuild every other rank's data (from its rank number), so expected values are computed
locally. Sizes are uneven. The reduce-scatter volume of the torch backend (gloo here, NCCL on GPUs:
the same padded call) is checked against the analytic count.
"""
import numpy as np
import pytest
import torch

from hpc_fcn.accel.device import cuda_device
from hpc_fcn.parallel.comm import MPICommunicator
from hpc_fcn.parallel.torch_comm import TorchCommunicator
from hpc_fcn.parallel.split import split_sizes
from hpc_fcn.parallel.testing import sub_comm
from hpc_fcn.tracing import Tracer


def comm_bytes(tracer: Tracer, op: str) -> int:
    return sum(e[4] for e in tracer.events if e[1] == "comm" and f"/{op}@" in e[0])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_host_collectives(n):
    with sub_comm(n) as raw:
        if raw is None:
            return
        tr = Tracer(rank=raw.rank)
        c = MPICommunicator(raw, "t", lambda: tr)
        r = c.rank
        # all_reduce: arrays (a new array, input untouched), numbers, max/min
        x = np.arange(5, dtype=np.float64) * (r + 1)
        got = c.all_reduce(x, tag="x")
        np.testing.assert_array_equal(got, np.arange(5) * sum(range(1, n + 1)))
        np.testing.assert_array_equal(x, np.arange(5) * (r + 1))
        assert c.all_reduce(float(r)) == sum(range(n))
        assert c.all_reduce(r, op="max") == n - 1 and c.all_reduce(r, op="min") == 0
        assert comm_bytes(tr, "all_reduce_sum") >= 2 * x.nbytes * (n - 1) // n
        # gatherv_to_root: uneven shapes, rank order, None off the root
        a = np.full((r + 1, 3), r, dtype=np.float32)
        pieces = c.gatherv_to_root(a, root=1, tag="g")
        if r == 1:
            assert [p.shape for p in pieces] == [(q + 1, 3) for q in range(n)]
            assert all((p == q).all() and p.dtype == np.float32 for q, p in enumerate(pieces))
            assert comm_bytes(tr, "gatherv") == 0
        else:
            assert pieces is None and comm_bytes(tr, "gatherv") == a.nbytes
        # alltoallv: rank r sends (r + 1) * (q + 1) elements valued 100 r + q to rank q
        send_counts = [(r + 1) * (q + 1) for q in range(n)]
        send = np.concatenate([np.full(k, 100 * r + q, np.int64) for q, k in enumerate(send_counts)])
        recv_counts = [(q + 1) * (r + 1) for q in range(n)]
        got = c.alltoallv(send, send_counts, recv_counts, tag="a")
        np.testing.assert_array_equal(got, np.concatenate([np.full(k, 100 * q + r) for q, k in enumerate(recv_counts)]))
        assert comm_bytes(tr, "alltoallv") == 8 * (sum(send_counts) - send_counts[r])
        # objects
        assert c.bcast({"r": r} if r == 0 else None) == {"r": 0}
        assert c.allgather(r * r) == [q * q for q in range(n)]
        g = c.gather(str(r), root=0)
        assert g == [str(q) for q in range(n)] if r == 0 else g is None
        c.barrier()
        # split: colour None leaves a rank out; the sub-communicator keeps the tracer
        sub = c.split(0 if r % 2 == 0 else None, key=-r, name="even")
        if r % 2:
            assert sub is None
        else:
            evens = list(range(0, n, 2))
            assert sub.size == len(evens) and sub.rank == len(evens) - 1 - r // 2  # key -r: reversed
            assert sub.all_reduce(1) == len(evens)
            sub.free()
        assert any("@even" in e[0] for e in tr.events) == (r % 2 == 0 and len(range(0, n, 2)) > 1)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_torch_reduce_scatter_volume_is_the_analytic_one(n):
    """Pieces padded to the largest: each rank sends (n - 1) x the largest piece, whatever its own."""
    with sub_comm(n) as raw:
        if raw is None:
            return
        tr = Tracer(rank=raw.rank)
        c = TorchCommunicator(raw, "t", lambda: tr)
        try:
            rows, cols = 7, 5
            sizes = split_sizes(rows, n)
            x = torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols) * (c.rank + 1)
            got = c.reduce_scatter(x, 0, sizes, tag="rs")
            start = sum(sizes[:c.rank])
            total = sum(range(1, n + 1))
            want = torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols)[start:start + sizes[c.rank]] * total
            assert torch.equal(got, want)
            assert comm_bytes(tr, "reduce_scatter") == (n - 1) * max(sizes) * cols * 4
        finally:
            c.close()


def test_cuda_devices_must_be_indexed():
    assert cuda_device("cuda:1") == torch.device("cuda", 1)
    assert cuda_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="must be indexed"):
        cuda_device("cuda")
