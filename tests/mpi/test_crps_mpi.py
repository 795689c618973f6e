"""The fair-CRPS loss with members over the ensemble axis equals the serial loss: value and gradients (fp32).

Every rank computes the serial reference (all members, whole field, one rank) itself; the distributed
shares, summed over the ranks, must give its loss, and each rank's member gradients its slice of the
serial gradient. Member counts are uneven over the ensemble ranks (5 and 7 over 2, 3 and 4). The same
holds for the spectral and zonal-mean terms, whose rows split over w are gathered first.
"""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpc_fcn.parallel.grid import ProcessGrid
from hpc_fcn.parallel.split import shard_range, split_offsets, split_sizes
from hpc_fcn.parallel.testing import sub_comm
from hpc_fcn.tracing import Tracer
from hpc_fcn.train.crps import EnsembleCRPS, member_sizes
from hpc_fcn.train.loss import channel_weights, latitude_weights

B, C, R, W = 2, 3, 9, 16
LAYOUTS = {"ens2": dict(ensemble=2), "ens2_h2": dict(ensemble=2, h=2), "ens2_w2": dict(ensemble=2, w=2),
           "ens4": dict(ensemble=4)}


def _case(M):
    g = torch.Generator().manual_seed(100 + M)
    x = torch.randn(M, B, C, R, W, generator=g) * torch.linspace(0.5, 2.0, W)  # fp32
    y = torch.randn(B, C, R, W, generator=g)
    return x, y, latitude_weights(np.linspace(90, -90, R), "area"), channel_weights(["a", "b", "c"], {"b": 3.0})


def _serial(M, term):
    x, y, lat_w, chan_w = _case(M)
    with ProcessGrid(MPI.COMM_SELF) as one:
        a = x.clone().requires_grad_()
        fn = EnsembleCRPS(lat_w, chan_w, slice(None), slice(None), W, one.ensemble, M)
        loss = getattr(fn, term)(a, y)
        loss.backward()
    return float(loss.detach()), a.grad


def check(comm, shape, M, term="__call__"):
    x, y, lat_w, chan_w = _case(M)
    want_loss, want_grad = _serial(M, term)
    with ProcessGrid(comm, **shape, tracer=Tracer(rank=comm.Get_rank())) as grid:
        rows = slice(*shard_range(R, grid.shape["h"], grid.coords["h"]))
        cols = slice(*shard_range(W, grid.shape["w"], grid.coords["w"]))
        fn = EnsembleCRPS(lat_w, chan_w, rows, cols, W, grid.ensemble, M, grid.w, split_sizes(W, grid.w.size))
        first = split_offsets(M, grid.ensemble.size)[grid.ensemble.rank]
        mine = slice(first, first + fn.local_members)
        own = x[mine][..., rows, cols].clone().requires_grad_()
        loss = getattr(fn, term)(own, y[..., rows, cols])
        loss.backward()
        total = grid.world.all_reduce(float(loss.detach()), tag="test")  # shares over ensemble x h x w
        assert total == pytest.approx(want_loss, rel=1e-5)
        ref = want_grad[mine][..., rows, cols]
        scale = float(want_grad.abs().max())
        assert float((own.grad - ref).abs().max()) <= 1e-5 * scale, (own.grad - ref).abs().max()
        summ = grid.tracer.summary()
        tag = {"__call__": "crps_members", "spectral": "crps_spectral", "zonal": "crps_zonal"}[term]
        if grid.ensemble.size > 1:  # the cross-member term: all-gather over the ensemble, adjoint reduce-scatter
            assert any(k.startswith(f"{tag}/all_gather@ensemble") for k in summ), sorted(summ)
            assert any(k.startswith(f"{tag}/reduce_scatter@ensemble") for k in summ), sorted(summ)
        if term != "__call__" and grid.w.size > 1:  # whole rows: all-gather over w, adjoint reduce-scatter
            assert any(k.startswith(f"{tag}/reduce_scatter@w") for k in summ), sorted(summ)
        if grid.ensemble.size > 1:
            with pytest.raises(ValueError, match="member ensemble of size .* a rank would get nothing"):
                member_sizes(grid.ensemble.size - 1, grid.ensemble)


@pytest.mark.parametrize("term", ["__call__", "spectral", "zonal"])
@pytest.mark.parametrize("M", [5, 7])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_distributed_crps_equals_serial(layout, M, term):
    shape = LAYOUTS[layout]
    with sub_comm(int(np.prod(list(shape.values())))) as comm:
        if comm is not None:
            check(comm, shape, M, term)


@pytest.mark.odd_ranks
def test_distributed_crps_equals_serial_on_three_ranks():
    if MPI.COMM_WORLD.size != 3:
        pytest.skip("ensemble=3 runs under mpirun -n 3")
    check(MPI.COMM_WORLD, dict(ensemble=3), 7)
    check(MPI.COMM_WORLD, dict(ensemble=1, w=3), 7, "spectral")  # 16 columns: 6 + 5 + 5
    check(MPI.COMM_WORLD, dict(ensemble=1, w=3), 7, "zonal")
