"""Autograd primitives: forward against explicit results, backward against the explicit adjoint.

Every rank can rebuild every other rank's tensors (generated from per-rank seeds), so the expected
values are computed locally. Shards are uneven (7 rows over 2, 3 and 4 ranks).
"""
import pytest
import torch

from hpc_fcn.parallel import (all_reduce, copy_to, gather, gather_to, reduce_from, reduce_scatter_from, scatter,
                              split_sizes, transpose)
from hpc_fcn.parallel.grid import ProcessGrid
from hpc_fcn.parallel.testing import sub_comm
from hpc_fcn.tracing import Tracer

BACKENDS = ["mpi", "torch"]
N = 7  # length of the sharded dimension: uneven on 2, 3 and 4 ranks


def data(seed, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def close(a, b, tol=1e-12):  # float64 data moved exactly or summed over <= 4 ranks: a few 2^-53
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max().item()


def own(t, sizes, r, dim=0):
    return t.narrow(dim, sum(sizes[:r]), sizes[r])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_primitives_and_adjoints(backend, n):
    with sub_comm(n) as comm:
        if comm is None:
            return
        with ProcessGrid(comm, w=n, backend=backend, tracer=Tracer(rank=comm.rank)) as grid:
            ax, r = grid.w, grid.w.rank
            sizes = split_sizes(N, n)
            ranks = range(n)

            # copy_to: identity forward, all-reduce of the rank-partial gradients backward
            x = data(1, N, 3).requires_grad_()
            out = copy_to(x, ax)
            close(out, x.detach())
            (out * data(10 + r, N, 3)).sum().backward()
            close(x.grad, sum(data(10 + q, N, 3) for q in ranks))

            # reduce_from: all-reduce forward, identity backward (replicated consumer)
            x = data(20 + r, N, 3).requires_grad_()
            out = reduce_from(x, ax)
            close(out, sum(data(20 + q, N, 3) for q in ranks))
            (out * data(2, N, 3)).sum().backward()
            close(x.grad, data(2, N, 3))

            # all_reduce: self-adjoint
            x = data(30 + r, N, 3).requires_grad_()
            out = all_reduce(x, ax)
            close(out, sum(data(30 + q, N, 3) for q in ranks))
            (out * data(40 + r, N, 3)).sum().backward()
            close(x.grad, sum(data(40 + q, N, 3) for q in ranks))

            # scatter: own shard forward, all-gather backward
            x = data(3, 2, N).requires_grad_()
            out = scatter(x, ax, dim=1)
            close(out, own(data(3, 2, N), sizes, r, 1))
            (out * data(50 + r, 2, sizes[r])).sum().backward()
            close(x.grad, torch.cat([data(50 + q, 2, sizes[q]) for q in ranks], dim=1))

            # gather: all-gather forward, own shard backward (replicated consumer)
            x = data(60 + r, sizes[r], 2).requires_grad_()
            out = gather(x, ax, dim=0, n=N)
            close(out, torch.cat([data(60 + q, sizes[q], 2) for q in ranks]))
            (out * data(4, N, 2)).sum().backward()
            close(x.grad, own(data(4, N, 2), sizes, r))

            # gather_to: all-gather forward, reduce-scatter backward (rank-partial consumer)
            x = data(70 + r, sizes[r], 2).requires_grad_()
            out = gather_to(x, ax, dim=0, n=N)
            close(out, torch.cat([data(70 + q, sizes[q], 2) for q in ranks]))
            (out * data(80 + r, N, 2)).sum().backward()
            close(x.grad, own(sum(data(80 + q, N, 2) for q in ranks), sizes, r))

            # reduce_scatter_from: reduce-scatter forward, all-gather backward
            x = data(90 + r, 2, N).requires_grad_()
            out = reduce_scatter_from(x, ax, dim=-1)
            close(out, own(sum(data(90 + q, 2, N) for q in ranks), sizes, r, 1))
            (out * data(100 + r, 2, sizes[r])).sum().backward()
            close(x.grad, torch.cat([data(100 + q, 2, sizes[q]) for q in ranks], dim=1))

            # transpose of complex data: rows sharded -> columns sharded, backward the inverse
            M = 5 + n  # columns, also uneven
            csizes = split_sizes(M, n)
            full = torch.complex(data(5, N, 2, M), data(6, N, 2, M))
            x = own(full, sizes, r).clone().requires_grad_()
            out = transpose(x, ax, gather_dim=0, scatter_dim=2, gather_sizes=N)
            close(out, own(full, csizes, r, 2))
            gfull = torch.complex(data(7, N, 2, M), data(8, N, 2, M))
            (out * own(gfull, csizes, r, 2).conj()).real.sum().backward()
            close(x.grad, own(gfull, sizes, r))

            # low precision is summed in fp32 and rounded once: 1 + (n-1) * 2^-8 (a bf16 chain gives 1.0)
            t = torch.full((4,), 1.0 if r == 0 else 2.0 ** -8, dtype=torch.bfloat16)
            got = ax.all_reduce(t)
            assert got.dtype == torch.bfloat16
            assert got.tolist() == [torch.tensor(1 + (n - 1) * 2.0 ** -8).bfloat16().item()] * 4

            # accounting: every collective was recorded with the bytes this rank sends
            summ = grid.tracer.summary()
            ag = [v for k, v in summ.items() if k.startswith("gather/all_gather")]
            assert ag and ag[0]["bytes"] == sizes[r] * 2 * 8 * (n - 1)
            a2a = sum(v["bytes"] for k, v in summ.items() if "all_to_all" in k)
            # forward + backward: rows to the others, then their columns back
            assert a2a == sizes[r] * 2 * 16 * (M - csizes[r]) + csizes[r] * 2 * 16 * (N - sizes[r])


def test_empty_shards_are_an_error():
    with sub_comm(4) as comm:
        if comm is None:
            return
        with ProcessGrid(comm, h=4) as grid:
            with pytest.raises(ValueError, match="a rank would get nothing"):
                scatter(torch.zeros(3, 2), grid.h, dim=0)
            with pytest.raises(ValueError, match="a rank would get nothing"):
                gather(torch.zeros(1, 2), grid.h, dim=0, n=3)
