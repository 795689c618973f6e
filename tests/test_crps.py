"""The fair-CRPS loss on one rank: value against hpc_fcn.metrics, gradient against the pairwise definition."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpc_fcn import metrics as mt
from hpc_fcn.parallel.grid import ProcessGrid
from hpc_fcn.train.crps import EnsembleCRPS, fair_crps_share, member_sizes
from hpc_fcn.train.loss import channel_weights, latitude_weights

M, B, C, R, W = 5, 2, 3, 7, 8


@pytest.fixture(scope="module")
def axis():
    with ProcessGrid(MPI.COMM_SELF) as grid:
        yield grid.ensemble


def _data(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(M, B, C, R, W, generator=g, dtype=dtype), torch.randn(B, C, R, W, generator=g, dtype=dtype)


def _weights():
    return latitude_weights(np.linspace(90, -90, R), "area"), channel_weights(["a", "b", "c"], {"b": 3.0})


def _pairwise_loss(x, y, weight):
    """The definition, term by term: mean_m |x_m - y| - sum_mm' |x_m - x_m'| / (2 M (M - 1)), weighted."""
    crps = (x - y).abs().mean(0) - (x[:, None] - x[None, :]).abs().sum((0, 1)) / (2 * M * (M - 1))
    return (crps * weight).sum() / (C * R * W)


def test_loss_equals_metrics_crps_fair(axis):
    x, y = _data(torch.float64)
    lat_w, chan_w = _weights()
    loss = EnsembleCRPS(lat_w, chan_w, slice(None), slice(None), W, axis, M)(x, y)
    per_point = mt.crps_fair(x.numpy(), y.numpy())  # (B, C, R, W)
    want = sum((mt.weighted_mean(per_point[b], lat_w) * chan_w).mean() for b in range(B))
    assert float(loss) == pytest.approx(want, rel=1e-6)  # the weights are stored in fp32
    np.testing.assert_allclose(fair_crps_share(x, y, axis, [M]).numpy(), per_point, rtol=1e-12, atol=1e-12)


def test_gradient_equals_the_pairwise_definition(axis):
    lat_w, chan_w = _weights()
    fn = EnsembleCRPS(lat_w, chan_w, slice(None), slice(None), W, axis, M)
    x, y = _data(torch.float64, seed=1)
    a = x.clone().requires_grad_()
    fn(a, y).backward()
    b = x.clone().requires_grad_()
    _pairwise_loss(b, y, fn.weight.double()).backward()  # the same fp32-rounded weights
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)
    # fp32: the same to round-off
    a32 = x.float().requires_grad_()
    fn(a32, y.float()).backward()
    torch.testing.assert_close(a32.grad.double(), b.grad, rtol=1e-5, atol=1e-8)


def test_gradcheck_float64(axis):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    fn = EnsembleCRPS(np.ones(3), np.ones(2), slice(None), slice(None), 4, axis, 4)
    assert torch.autograd.gradcheck(lambda t: fn(t, y), (x,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda t: fair_crps_share(t, y, axis, [4]), (x,), eps=1e-6, atol=1e-7)


def test_one_member_is_the_absolute_error(axis):
    x, y = _data(torch.float64)
    np.testing.assert_allclose(fair_crps_share(x[:1], y, axis, [1]).numpy(), (x[0] - y).abs().numpy(), rtol=1e-15)


def test_bad_input_is_a_clear_error(axis):
    x, y = _data(torch.float32)
    lat_w, chan_w = _weights()
    fn = EnsembleCRPS(lat_w, chan_w, slice(None), slice(None), W, axis, M + 1)
    with pytest.raises(ValueError, match="must hold 6 of the 6 members"):
        fn(x, y)
    with pytest.raises(ValueError, match="does not end with the window"):
        fn(x, y[..., :-1])
    with pytest.raises(ValueError, match="at least one member"):
        member_sizes(0, axis)
