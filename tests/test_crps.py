"""The fair-CRPS loss on one rank: value against hpc_fcn.metrics, gradient against the pairwise definition; its
spectral term against the CRPS of numpy's Fourier coefficients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi4py import MPI

from hpc_fcn import metrics as mt
from hpc_fcn.parallel.grid import ProcessGrid
from hpc_fcn.train.crps import EnsembleCRPS, fair_crps_share, member_sizes, zonal_coefficients
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
    # the weights are stored in fp32: 2^-24 relative each (6e-8) on a sum of mostly positive terms
    assert float(loss) == pytest.approx(want, rel=1e-6)
    # float64 sorted cumulative sums vs metrics' sorted form, M = 5 O(1) values: ~1e-15; atol where they cancel
    np.testing.assert_allclose(fair_crps_share(x, y, axis, [M]).numpy(), per_point, rtol=1e-12, atol=1e-12)


def test_gradient_equals_the_pairwise_definition(axis):
    lat_w, chan_w = _weights()
    fn = EnsembleCRPS(lat_w, chan_w, slice(None), slice(None), W, axis, M)
    x, y = _data(torch.float64, seed=1)
    a = x.clone().requires_grad_()
    fn(a, y).backward()
    b = x.clone().requires_grad_()
    _pairwise_loss(b, y, fn.weight.double()).backward()  # the same fp32-rounded weights
    # float64: sums of signs times weights / count (~1e-3): round-off ~eps64 * 1e-3 = 2e-19 (atol 1e-15)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)
    # fp32: the same to round-off, a few 2^-24 relative (~3e-7); atol for entries that cancel to ~0 (1e-5 of 1e-3)
    a32 = x.float().requires_grad_()
    fn(a32, y.float()).backward()
    torch.testing.assert_close(a32.grad.double(), b.grad, rtol=1e-5, atol=1e-8)


def test_gradcheck_float64(axis):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    fn = EnsembleCRPS(np.ones(3), np.ones(2), slice(None), slice(None), 4, axis, 4)
    # central differences of a piecewise-linear loss: exact off kinks, round-off eps64 * |f| / eps ~ 1e-10 < atol
    assert torch.autograd.gradcheck(lambda t: fn(t, y), (x,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda t: fair_crps_share(t, y, axis, [4]), (x,), eps=1e-6, atol=1e-7)


def test_one_member_is_the_absolute_error(axis):
    x, y = _data(torch.float64)
    # one member: |x - y| summed over one member and divided by 1, exact (rtol: a few ulp)
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


# ---- the spectral term: the fair CRPS of each row's zonal Fourier coefficients ----------------------------
def _numpy_coefficients(a: np.ndarray) -> np.ndarray:
    """Real and imaginary parts of numpy's orthonormal rfft, conjugate pairs counted once (x sqrt 2)."""
    n = a.shape[-1]
    f = np.fft.rfft(a, axis=-1, norm="ortho")
    k = np.arange(f.shape[-1])
    f = f * np.where((k > 0) & (2 * k != n), np.sqrt(2.0), 1.0)
    return np.stack([f.real, f.imag], axis=-1)


@pytest.mark.parametrize("n", [8, 9])
def test_zonal_coefficients_keep_the_energy(n):
    x = torch.randn(3, 4, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    c = zonal_coefficients(x)
    # float64 FFTs (torch's MKL or pocketfft vs numpy's): ~eps64 * log2(n) * |row| ~ 2e-15 absolute
    np.testing.assert_allclose(c.numpy(), _numpy_coefficients(x.numpy()), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose((c ** 2).sum((-2, -1)).numpy(), (x ** 2).sum(-1).numpy(), rtol=1e-12)  # Parseval


def test_spectral_term_equals_metrics_crps_fair_of_the_coefficients(axis):
    x, y = _data(torch.float64, seed=3)
    lat_w, chan_w = _weights()
    fn = EnsembleCRPS(lat_w, chan_w, slice(None), slice(None), W, axis, M)
    per_coef = mt.crps_fair(_numpy_coefficients(x.numpy()), _numpy_coefficients(y.numpy()))  # (B, C, R, K, 2)
    want = (per_coef * chan_w[:, None, None, None] * lat_w[None, :, None, None]).sum() / (C * R * W)
    assert float(fn.spectral(x, y)) == pytest.approx(want, rel=1e-6)  # fp32 weights: 2^-24 each, as above
    a = x.clone().requires_grad_()
    # piecewise linear in coefficients linear in x: exact off kinks, round-off ~1e-10 < atol
    assert torch.autograd.gradcheck(lambda t: fn.spectral(t, y), (a,), eps=1e-6, atol=1e-7)


def test_spectral_term_of_white_noise_equals_the_pointwise_crps(axis):
    """Unit white noise has unit variance in every coefficient, so both terms estimate the same CRPS."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 2, 2, 32, 64, generator=g, dtype=torch.float64)
    y = torch.randn(2, 2, 32, 64, generator=g, dtype=torch.float64)
    fn = EnsembleCRPS(np.ones(32), np.ones(2), slice(None), slice(None), 64, axis, 40)
    point, spectral = float(fn(x, y)), float(fn.spectral(x, y))
    assert spectral == pytest.approx(point, rel=0.02)  # Monte Carlo: their ratio's sd is 0.2 % (over seeds): 10 sd
    # 1 / sqrt(pi) per sample, 2 summed; Monte Carlo: sd 0.9 % over seeds at 8192 points, 0.05 is ~6 sd
    assert point == pytest.approx(2 * (2 - 1) / np.sqrt(np.pi), rel=0.05)


def test_spectral_term_sees_spread_at_the_wrong_scale(axis):
    """Members with the right point-wise spread but at the wrong wavenumber: the point-wise CRPS hardly moves,
    the spectral one rises."""
    g = torch.Generator().manual_seed(5)
    n, lon = 200, torch.arange(64, dtype=torch.float64) * 2 * np.pi / 64
    phase = lambda *s: torch.rand(*s, 1, generator=g, dtype=torch.float64) * 2 * np.pi
    truth = torch.cos(3 * lon + phase(4, 1, 1))  # wavenumber 3 with a random phase
    right = torch.cos(3 * lon + phase(n, 4, 1, 1))
    wrong = torch.cos(20 * lon + phase(n, 4, 1, 1))
    fn = EnsembleCRPS(np.ones(1), np.ones(1), slice(None), slice(None), 64, axis, n)
    point = float(fn(wrong, truth)) / float(fn(right, truth))
    spectral = float(fn.spectral(wrong, truth)) / float(fn.spectral(right, truth))
    assert point < 1.1 and spectral > 2.0, (point, spectral)


def test_zonal_term_equals_metrics_crps_fair_of_the_row_means(axis):
    x, y = _data(torch.float64, seed=6)
    lat_w, chan_w = _weights()
    fn = EnsembleCRPS(lat_w, chan_w, slice(None), slice(None), W, axis, M)
    rows = mt.crps_fair(x.numpy().mean(-1) * np.sqrt(W), y.numpy().mean(-1) * np.sqrt(W))  # (B, C, R)
    want = (rows * chan_w[:, None] * lat_w[None, :]).sum() / (C * R)
    assert float(fn.zonal(x, y)) == pytest.approx(want, rel=1e-6)  # fp32 weights: 2^-24 each, as above
    a = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn.zonal(t, y), (a,), eps=1e-6, atol=1e-7)  # piecewise linear, as above


def test_zonal_term_of_white_noise_equals_the_pointwise_crps(axis):
    """A row mean of unit white noise times sqrt(nlon) is a unit normal: both terms estimate the same CRPS, 1 /
    sqrt(pi) per sample (1024 row means: the estimate's standard error is 2.3 %)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(40, 8, 2, 64, 64, generator=g, dtype=torch.float64)
    y = torch.randn(8, 2, 64, 64, generator=g, dtype=torch.float64)
    fn = EnsembleCRPS(np.ones(64), np.ones(2), slice(None), slice(None), 64, axis, 40)
    expected = 8 / np.sqrt(np.pi)  # summed over the batch of 8
    assert float(fn(x, y)) == pytest.approx(expected, rel=0.02)  # Monte Carlo: sd 0.27 % at 65536 points, ~7 sd
    # Monte Carlo: standard error 2.3 % (docstring), ~3.5 se; seeded, so fixed up to round-off on every kernel
    assert float(fn.zonal(x, y)) == pytest.approx(expected, rel=0.08)


def test_zonal_term_weighs_a_drift_of_the_zonal_mean_sqrt_nlon_times_more(axis):
    """Members that equal the truth shifted by a constant along each row: the point-wise CRPS is the shift,
    the zonal term sqrt(nlon) times it (the drift is error at every point; one row mean carries all of it)."""
    g = torch.Generator().manual_seed(8)
    y = torch.randn(1, 3, 16, 64, generator=g, dtype=torch.float64)
    shift = 0.1 * torch.randn(1, 3, 16, 1, generator=g, dtype=torch.float64)
    x = (y + shift).expand(5, -1, -1, -1, -1)
    fn = EnsembleCRPS(np.ones(16), np.ones(3), slice(None), slice(None), 64, axis, 5)
    point, zonal = float(fn(x, y)), float(fn.zonal(x, y))
    # float64, unit weights: (y + shift) - y is shift to ~eps64 * |y| (1e-15 against |shift| ~ 0.1); was 1e-6
    assert point == pytest.approx(float(shift.abs().mean()), rel=1e-12)
    assert zonal == pytest.approx(8.0 * point, rel=1e-12)  # row sums of 64 such: ~64 * eps64 * |y| / |shift|
