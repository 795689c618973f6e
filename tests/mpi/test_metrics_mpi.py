"""The score accumulator over a grid split unevenly across ranks equals the serial result after the allreduce."""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from hpc_fcn import metrics as mt
from hpc_fcn.parallel.comm import MPICommunicator

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.odd_ranks]


def _bounds(n, parts, first_extra):
    """Uneven split of range(n): part 0 gets ``first_extra`` more than the rest share evenly."""
    base = (n - first_extra) // parts
    sizes = [base] * parts
    sizes[0] += first_extra + (n - first_extra) % parts
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _scores(comm):
    rng = np.random.default_rng(42)  # identical data on every rank
    n_init, L, M, C, R, W = 3, 2, 5, 3, 11, 14
    members = rng.normal(size=(n_init, L, M, C, R, W))
    truth = rng.normal(size=(n_init, L, C, R, W))
    clim = rng.normal(scale=0.3, size=(C, R, W))
    w = mt.lat_weights(90.0 - 180.0 * np.arange(R + 1) / R)[:R]  # global weights, sliced per window

    serial = mt.ScoreAccumulator(["u", "v", "t"], L, M, control_member=2)
    for i in range(n_init):
        for lead in range(L):
            serial.add(lead, members[i, lead], truth[i, lead], clim, w)
    expect = serial.reduce()

    size, rank = comm.Get_size(), comm.Get_rank()
    ph = 2 if size % 2 == 0 else 1
    pw = size // ph
    rows = _bounds(R, ph, 3)[rank // pw]
    cols = _bounds(W, pw, 2)[rank % pw]
    par = mt.ScoreAccumulator(["u", "v", "t"], L, M, control_member=2, rng=np.random.default_rng(rank))
    for i in range(n_init):
        for lead in range(L):
            par.add(lead, members[i, lead][:, :, rows, cols], truth[i, lead][:, rows, cols], clim[:, rows, cols],
                    w[rows])
    return expect, par.reduce(MPICommunicator(comm, "scores"))


def test_distributed_scores_equal_serial():
    comm = MPI.COMM_WORLD
    expect, got = _scores(comm)
    for key in ("rmse", "acc", "crps", "spread", "ssr", "mae_control", "rmse_control"):
        # float64 sums of ~1e3 terms in another order: n * 2^-53 ~ 1e-13 relative
        np.testing.assert_allclose(got[key], expect[key], rtol=1e-12, atol=1e-14, err_msg=key)
        assert np.isfinite(got[key]).all()
    # continuous data never tie, so the rank counts are exact whatever each rank's generator
    np.testing.assert_array_equal(got["rank_hist"], expect["rank_hist"])
    np.testing.assert_array_equal(got["count"], expect["count"])
    # every rank holds the same reduced result
    assert all(np.array_equal(r, got["rmse"]) for r in comm.allgather(got["rmse"]))


def test_mismatched_forecast_counts_are_an_error():
    comm = MPI.COMM_WORLD
    acc = mt.ScoreAccumulator(["u"], 1, 2)
    x = np.arange(2 * 1 * 2 * 3, dtype=float).reshape(2, 1, 2, 3)
    for _ in range(1 + (comm.Get_rank() == 0)):
        acc.add(0, x, x[0], x[1], np.ones(2))
    with pytest.raises(RuntimeError, match="different numbers of forecasts"):
        acc.reduce(MPICommunicator(comm, "scores"))
