"""Metrics against direct loop-based evaluations of the reference formulas (float64, 1e-12)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hpc_fcn import metrics as mt
from tool_module import load_tool

# float64 loops vs vectorised sums of <= ~1e3 O(1) terms: n * eps64 ~ 2e-13; atol where a score cancels to ~0
TOL = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _loop_wmean(x2d, w):
    num = den = 0.0
    for i in range(x2d.shape[0]):
        for j in range(x2d.shape[1]):
            num += w[i] * x2d[i, j]
            den += w[i]
    return num / den


def _loop_crps(xs, o, fair):
    M = len(xs)
    skill = sum(abs(x - o) for x in xs) / M
    spread = sum(abs(a - b) for a in xs for b in xs)
    return skill - spread / (2 * M * (M - 1) if fair else 2 * M * M)


# -- latitude weights ------------------------------------------------------------------------------
def _loop_bands(lat):
    n = len(lat)
    areas = []
    for i in range(n):
        up = lat[0] + (lat[0] - lat[1]) / 2 if i == 0 else (lat[i - 1] + lat[i]) / 2
        lo = lat[-1] - (lat[-2] - lat[-1]) / 2 if i == n - 1 else (lat[i] + lat[i + 1]) / 2
        up, lo = min(max(up, -90), 90), min(max(lo, -90), 90)
        areas.append(abs(np.sin(np.deg2rad(up)) - np.sin(np.deg2rad(lo))))
    return np.array(areas)


@pytest.mark.parametrize("rows", [721, 181, 33, 5])
def test_area_weights_mean_one_and_cover_the_sphere(rows):
    full = 90.0 - 180.0 * np.arange(rows) / (rows - 1)  # both poles included
    bands = _loop_bands(full)
    # the bands tile the sphere (area / 2 pi = 2); float64 sum of <= 721 sines: n * eps64 ~ 2e-13
    assert bands.sum() == pytest.approx(2.0, abs=1e-12)
    for lat in (full, full[:-1], full[::-1]):  # with poles, the model grid (no south pole), south->north
        w = mt.lat_weights(lat)
        assert w.shape == lat.shape and w.mean() == pytest.approx(1.0, abs=1e-12)  # float64 mean: n * eps64 ~ 2e-13
        b = _loop_bands(lat)
        np.testing.assert_allclose(w, b / b.mean(), **TOL)  # the same sines, float64 round-off only
    # the weighted mean of sin^2(phi) over the sphere is 1/3; the cell-band rule converges as h^2
    w = mt.lat_weights(full)
    err = abs(mt.weighted_mean(np.sin(np.deg2rad(full))[:, None] ** 2 * np.ones((1, 4)), w) - 1 / 3)
    assert err < 0.5 * (np.pi / (rows - 1)) ** 2


def test_area_weights_of_model_grid_cover_all_but_the_south_cap():
    lat = 90.0 - 0.25 * np.arange(720)
    raw = _loop_bands(lat)
    # missing: the cap south of -89.875 degrees; float64 sum of 720 sines: n * eps64 ~ 2e-13
    assert raw.sum() == pytest.approx(2.0 - (1 - np.sin(np.deg2rad(89.875))), abs=1e-12)
    w = mt.lat_weights(lat)
    assert w[0] < w[1] and w[-1] > w[0]  # the north-pole cell is half a band; the last row is a full band


def test_fourcastnet_weights_match_paper_formula():
    for n in (720, 32):
        lat = np.linspace(90, -90, n, endpoint=False)
        w = mt.lat_weights(lat, mode="fourcastnet")
        s = sum(np.cos(np.pi / 180 * (90 - 180 * j / (n - 1))) for j in range(n))
        expect = [n * np.cos(np.pi / 180 * (90 - 180 * j / (n - 1))) / s for j in range(n)]
        np.testing.assert_allclose(w, expect, **TOL)  # the same cosines: float64 round-off of an n-term sum
    # on the model grid the two modes differ, as the reference says (by 7e-3 here, far above float64 round-off)
    lat = 90.0 - 0.25 * np.arange(720)
    assert np.abs(mt.lat_weights(lat, "fourcastnet") - mt.lat_weights(lat)).max() > 1e-4


def test_lat_weights_errors():
    with pytest.raises(ValueError, match="unknown latitude weighting 'cos'"):
        mt.lat_weights([10, 0, -10], mode="cos")
    with pytest.raises(ValueError, match="monotonic"):
        mt.lat_weights([10, 20, -10])
    with pytest.raises(ValueError, match="within"):
        mt.lat_weights([100, 0, -10])
    with pytest.raises(ValueError, match="at least 2"):
        mt.lat_weights([0.0])


# -- deterministic scores ------------------------------------------------------------------------------
def test_weighted_mean_rmse_acc_equal_loops(rng):
    C, R, W = 3, 6, 7
    f, o, cl = rng.normal(size=(3, C, R, W))
    w = mt.lat_weights(np.linspace(80, -80, R))
    # TOL: float64 sums of 42 terms in another order
    np.testing.assert_allclose(mt.weighted_mean(f, w), [_loop_wmean(f[c], w) for c in range(C)], **TOL)
    np.testing.assert_allclose(mt.rmse(f, o, w), [np.sqrt(_loop_wmean((f[c] - o[c]) ** 2, w)) for c in range(C)],
                               **TOL)
    expect = []
    for c in range(C):
        fa, oa = f[c] - cl[c], o[c] - cl[c]
        expect.append(_loop_wmean(fa * oa, w) / np.sqrt(_loop_wmean(fa ** 2, w) * _loop_wmean(oa ** 2, w)))
    np.testing.assert_allclose(mt.acc(f, o, cl, w), expect, **TOL)  # the same sums, float64 round-off
    assert mt.acc(o, o, cl, w) == pytest.approx(np.ones(C), abs=1e-14)  # s / sqrt(s * s): a few roundings of 1.1e-16


def test_partial_sums_over_windows_add_up(rng):
    x = rng.normal(size=(2, 9, 10))
    w = mt.lat_weights(np.linspace(90, -88, 9))
    num = mt.weighted_sum(x[..., :4, :3], w[:4]) + mt.weighted_sum(x[..., :4, 3:], w[:4]) \
        + mt.weighted_sum(x[..., 4:, :], w[4:])
    den = mt.weight_total(w[:4], 3) + mt.weight_total(w[:4], 7) + mt.weight_total(w[4:], 10)
    np.testing.assert_allclose(num / den, mt.weighted_mean(x, w), **TOL)  # float64 sums regrouped: ~n * eps64
    with pytest.raises(ValueError, match="do not fit"):
        mt.weighted_sum(x, w[:4])


# -- ensemble scores -------------------------------------------------------------------------------------
@pytest.mark.parametrize("M", [2, 5, 8])
def test_crps_equals_double_sum(rng, M):
    x = rng.normal(size=(M, 2, 3, 4))
    o = rng.normal(size=(2, 3, 4))
    fair, plain = mt.crps_fair(x, o), mt.crps_plain(x, o)
    for idx in itertools.product(range(2), range(3), range(4)):
        xs = [x[(k,) + idx] for k in range(M)]
        # float64 double sums of <= 64 O(1) terms: ~1e-14; abs where skill - spread cancels
        assert fair[idx] == pytest.approx(_loop_crps(xs, o[idx], True), rel=1e-12, abs=1e-12)
        assert plain[idx] == pytest.approx(_loop_crps(xs, o[idx], False), rel=1e-12, abs=1e-12)
    direct = np.abs(x[:, None] - x[None, :]).sum(axis=(0, 1))
    np.testing.assert_allclose(mt.pairwise_abs_sum(x), direct, **TOL)  # the same sum of <= 64 terms regrouped
    sorted_form = sum(2 * (2 * (k + 1) - M - 1) * np.sort(x, axis=0)[k] for k in range(M))
    np.testing.assert_allclose(mt.pairwise_abs_sum(x), sorted_form, **TOL)  # float64 round-off only


def test_crps_single_member_is_absolute_error(rng):
    x, o = rng.normal(size=(1, 4, 5)), rng.normal(size=(4, 5))
    # one member: no spread term, exact up to float64 round-off
    np.testing.assert_allclose(mt.crps_fair(x, o), np.abs(x[0] - o), **TOL)
    np.testing.assert_allclose(mt.crps_plain(x, o), np.abs(x[0] - o), **TOL)


def test_ensemble_mean_spread_ssr_equal_loops(rng):
    M, C, R, W = 6, 2, 5, 4
    x, o = rng.normal(size=(M, C, R, W)), rng.normal(size=(C, R, W))
    w = mt.lat_weights(np.linspace(60, -60, R))
    mean = sum(x[k] for k in range(M)) / M
    var = sum((x[k] - mean) ** 2 for k in range(M)) / (M - 1)
    # float64 sums of 6 members and of 20 points in another order: ~n * eps64
    np.testing.assert_allclose(mt.ensemble_mean(x), mean, **TOL)
    np.testing.assert_allclose(mt.ensemble_spread(x), np.sqrt(var), **TOL)
    ssr = [np.sqrt(_loop_wmean(var[c], w)) / np.sqrt(_loop_wmean((mean[c] - o[c]) ** 2, w)) for c in range(C)]
    np.testing.assert_allclose(mt.spread_skill_ratio(x, o, w), ssr, **TOL)
    assert np.isnan(mt.ensemble_spread(x[:1])).all()


def test_rank_histogram_without_ties_equals_loop(rng):
    M, C, R, W = 4, 3, 5, 6
    x, o = rng.normal(size=(M, C, R, W)), rng.normal(size=(C, R, W))
    expect = np.zeros((C, M + 1), dtype=int)
    for c, i, j in itertools.product(range(C), range(R), range(W)):
        expect[c, sum(x[k, c, i, j] < o[c, i, j] for k in range(M))] += 1
    np.testing.assert_array_equal(mt.rank_histogram(x, o, np.random.default_rng(0)), expect)


def test_rank_histogram_breaks_ties_at_random():
    M, n = 3, 40000
    x = np.zeros((M, 1, 1, n))
    x[0, ..., : n // 2] = -1.0  # half the points: one member below the truth, two tied with it
    o = np.zeros((1, 1, n))
    ranks = mt.truth_ranks(x, o, np.random.default_rng(7))
    assert ranks[..., : n // 2].min() == 1 and ranks[..., n // 2:].min() == 0 and ranks.max() == M
    hist = mt.rank_histogram(x, o, np.random.default_rng(7))[0]
    assert hist.sum() == n
    # all-tied points spread evenly over 4 ranks, the others over ranks 1..3
    expect = np.array([n / 2 / 4, n / 2 / 4 + n / 2 / 3, n / 2 / 4 + n / 2 / 3, n / 2 / 4 + n / 2 / 3])
    # Monte Carlo (seeded): smallest bin 5000 of 20000 at p = 1/4, binomial sd 61 (1.2 %): 0.05 is 4 sd
    np.testing.assert_allclose(hist, expect, rtol=0.05)
    np.testing.assert_array_equal(hist, mt.rank_histogram(x, o, np.random.default_rng(7))[0])


def test_rank_histogram_skips_points_with_a_nan_truth_or_member(rng):
    M, C, R, W = 4, 2, 5, 6
    x, o = rng.normal(size=(M, C, R, W)), rng.normal(size=(C, R, W))
    o[0, 1, :3] = np.nan           # truth missing (it used to land in bin 0)
    x[2, 1, 4, :] = np.nan         # one member missing
    x[:, 0, 0, 0] = np.nan         # every member missing
    expect = np.zeros((C, M + 1), dtype=int)
    for c, i, j in itertools.product(range(C), range(R), range(W)):
        if not (np.isnan(o[c, i, j]) or np.isnan(x[:, c, i, j]).any()):
            expect[c, sum(x[k, c, i, j] < o[c, i, j] for k in range(M))] += 1
    got = mt.rank_histogram(x, o, np.random.default_rng(0))
    np.testing.assert_array_equal(got, expect)
    assert got.sum(axis=-1).tolist() == [R * W - 3 - 1, R * W - W]
    assert (mt.truth_ranks(x, o, np.random.default_rng(0))[0, 1, :3] == -1).all()


# -- spread/skill: one pooled definition -----------------------------------------------------------
def _ensembles(rng, n, M, C, R, W, truth_scale=1.0, growth=0.0):
    """n forecasts whose truth and members are drawn from the same per-point normal distribution (scaled
    by ``truth_scale`` for the truth), the scale of forecast i times 1 + growth * i."""
    out = []
    for i in range(n):
        mu = rng.normal(size=(C, R, W))
        sigma = (1.0 + growth * i) * rng.uniform(0.5, 1.5, size=(C, R, W))
        out.append((mu + sigma * rng.normal(size=(M, C, R, W)), mu + truth_scale * sigma * rng.normal(size=(C, R, W))))
    return out


def _both_paths(forecasts, w):
    """Spread/skill through metrics.json's accumulator and through tools/evaluate_builtin.py."""
    tool = load_tool("evaluate_builtin")
    M, C = forecasts[0][0].shape[:2]
    acc_ = mt.ScoreAccumulator([f"c{c}" for c in range(C)], 1, M)
    for ens, truth in forecasts:
        acc_.add(0, ens, truth, np.zeros_like(truth), w)
    out = acc_.reduce()
    tool_scores = tool.ensemble_scores(((ens, ens[0], truth) for ens, truth in forecasts), w)
    return {k: out[k][0] for k in ("spread", "ssr", "ssr_corrected")}, tool_scores


def test_spread_skill_is_pooled_the_same_way_in_metrics_json_and_the_tool(rng):
    R, W = 6, 8
    w = mt.lat_weights(90.0 - 180.0 * np.arange(R) / R)
    forecasts = _ensembles(rng, 4, 5, 2, R, W, truth_scale=1.7, growth=3.0)
    acc_scores, tool_scores = _both_paths(forecasts, w)
    var = np.mean([[_loop_wmean(e[:, c].var(axis=0, ddof=1), w) for c in range(2)] for e, _ in forecasts], 0)
    mse = np.mean([[_loop_wmean((e[:, c].mean(0) - o[c]) ** 2, w) for c in range(2)] for e, o in forecasts], 0)
    wants = {"spread": np.sqrt(var), "ssr": np.sqrt(var / mse), "ssr_corrected": np.sqrt(var / mse * 6 / 5)}
    for k, want in wants.items():  # float64 sums of 48 points over 4 forecasts, regrouped
        np.testing.assert_allclose(acc_scores[k], want, **TOL, err_msg=k)
        np.testing.assert_allclose(tool_scores[k], want, **TOL, err_msg=k)
    # the old per-forecast average differs on these forecasts (their scales differ): the test can fail
    # (1e-3: far above float64 round-off, below the 3e-3 and 3e-2 the scales make with this seed)
    per_forecast = np.mean([mt.spread_skill_ratio(e, o, w) for e, o in forecasts], 0)
    assert np.abs(per_forecast - acc_scores["ssr"]).min() > 1e-3


@pytest.mark.parametrize("M, tol", [(4, 0.025), (20, 0.012)])
def test_perfect_ensemble_corrected_ratio_is_one(rng, M, tol):
    """Truth and members from one distribution: corrected ratio 1, uncorrected sqrt(M / (M + 1)), within
    sampling error (standard deviation ~0.6 % at M = 4 and ~0.3 % at M = 20 with 48 000 points, measured over
    seeds; the two ratios differ by 11 % at M = 4 and 2.4 % at M = 20, so the tolerances tell them apart)."""
    R, W = 40, 60
    w = mt.lat_weights(np.linspace(87, -87, R))
    acc_scores, tool_scores = _both_paths(_ensembles(rng, 20, M, 1, R, W), w)
    for scores in (acc_scores, tool_scores):  # Monte Carlo: tol ~4 sampling sd (docstring); the seed is fixed
        assert scores["ssr_corrected"][0] == pytest.approx(1.0, abs=tol)
        assert scores["ssr"][0] == pytest.approx(np.sqrt(M / (M + 1)), abs=tol)


def test_metrics_document_and_table_show_the_corrected_ratio(rng):
    from hpc_fcn.ensemble.report import format_table, metrics_document
    M, R, W = 4, 4, 6
    w = np.ones(R)
    (ens, truth), = _ensembles(rng, 1, M, 1, R, W)
    accs = {"ensemble": mt.ScoreAccumulator(["z"], 1, M), "persistence": mt.ScoreAccumulator(["z"], 1, 1),
            "climatology": mt.ScoreAccumulator(["z"], 1, 1)}
    accs["ensemble"].add(0, ens, truth, np.zeros_like(truth), w)
    for k in ("persistence", "climatology"):
        accs[k].add(0, ens[:1], truth, np.zeros_like(truth), w)
    scores = {k: a.reduce() for k, a in accs.items()}
    doc = metrics_document(scores, ["z"], [24], M, [np.datetime64("2020-01-01T00")], "area")
    ssr = doc["scores"]["ssr"]["z"][0]
    # float64: one sqrt and a product apart, ~eps64
    assert doc["scores"]["ssr_corrected"]["z"][0] == pytest.approx(ssr * np.sqrt((M + 1) / M), rel=1e-12)
    row = [line for line in format_table(doc, ["1d"]).splitlines() if "spread/skill (corrected)" in line]
    assert row == [f"| z | spread/skill (corrected) | {doc['scores']['ssr_corrected']['z'][0]:.3g} |"]


# -- the accumulator ----------------------------------------------------------------------------------
def _random_forecasts(rng, n_init, n_leads, M, C, R, W):
    members = rng.normal(size=(n_init, n_leads, M, C, R, W)) * (1 + np.arange(n_init))[:, None, None, None, None,
                                                                                           None]
    truth = rng.normal(size=(n_init, n_leads, C, R, W))
    clim = rng.normal(scale=0.5, size=(C, R, W))
    return members, truth, clim


def test_accumulator_equals_per_forecast_loops(rng):
    n_init, L, M, C, R, W = 3, 2, 5, 2, 6, 8
    members, truth, clim = _random_forecasts(rng, n_init, L, M, C, R, W)
    w = mt.lat_weights(90.0 - 180.0 * np.arange(R) / R)
    acc_ = mt.ScoreAccumulator(["a", "b"], L, M, control_member=0)
    for i in range(n_init):
        for lead in range(L):
            acc_.add(lead, members[i, lead], truth[i, lead], clim, w)
    out = acc_.reduce()
    for lead, c in itertools.product(range(L), range(C)):
        rm, ac, cr, var, mse, mae, rmc = [], [], [], [], [], [], []
        for i in range(n_init):
            x, o = members[i, lead, :, c], truth[i, lead, c]
            mean = sum(x) / M
            rm.append(np.sqrt(_loop_wmean((mean - o) ** 2, w)))
            fa, oa = mean - clim[c], o - clim[c]
            ac.append(_loop_wmean(fa * oa, w) / np.sqrt(_loop_wmean(fa ** 2, w) * _loop_wmean(oa ** 2, w)))
            pt = np.array([[_loop_crps(list(x[:, a, b]), o[a, b], True) for b in range(W)] for a in range(R)])
            cr.append(_loop_wmean(pt, w))
            var.append(_loop_wmean(sum((xk - mean) ** 2 for xk in x) / (M - 1), w))
            mse.append(_loop_wmean((mean - o) ** 2, w))
            mae.append(_loop_wmean(np.abs(x[0] - o), w))
            rmc.append(np.sqrt(_loop_wmean((x[0] - o) ** 2, w)))
        got = {k: out[k][lead, c] for k in ("rmse", "acc", "crps", "spread", "ssr", "mae_control", "rmse_control")}
        want = dict(rmse=np.mean(rm), acc=np.mean(ac), crps=np.mean(cr), spread=np.sqrt(np.mean(var)),
                    ssr=np.sqrt(np.mean(var)) / np.sqrt(np.mean(mse)), mae_control=np.mean(mae),
                    rmse_control=np.mean(rmc))
        for k in want:  # float64 sums of 48 points and 5 members regrouped: ~n * eps64; abs for a near-0 acc
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), (k, lead, c)
        # the documented convention: RMSE per forecast, then averaged (not the root of the pooled MSE; these
        # forecasts' scales differ by 3x, so the two differ far above 1e-6 and float64 round-off)
        assert abs(out["rmse"][lead, c] - np.sqrt(np.mean(mse))) > 1e-6
    assert out["rank_hist"].shape == (L, C, M + 1) and (out["rank_hist"].sum(axis=-1) == n_init * R * W).all()
    np.testing.assert_array_equal(out["count"], [n_init] * L)
    assert out["channels"] == ["a", "b"]


def test_accumulator_empty_lead_torch_input_and_errors(rng):
    M, C, R, W = 3, 1, 4, 4
    members, truth, clim = _random_forecasts(rng, 1, 1, M, C, R, W)
    w = np.ones(R)
    a = mt.ScoreAccumulator(["z500"], 2, M)
    a.add(1, torch.from_numpy(members[0, 0]).float(), torch.from_numpy(truth[0, 0]), clim, w)
    out = a.reduce()
    assert np.isnan(out["rmse"][0]).all() and np.isfinite(out["rmse"][1]).all()
    assert np.isnan(out["mae_control"]).all()  # no control member configured
    # the float32 members averaged in float64, as the accumulator does (not a float32 mean): float64 round-off
    mean = members[0, 0].astype(np.float32).astype(np.float64).mean(0)
    np.testing.assert_allclose(out["rmse"][1], mt.rmse(mean, truth[0, 0], w), rtol=1e-12)
    with pytest.raises(ValueError, match="members must be"):
        a.add(0, members[0, 0, :2], truth[0, 0], clim, w)
    with pytest.raises(ValueError, match="do not fit"):
        a.add(0, members[0, 0], truth[0, 0], clim, w[:3])
    with pytest.raises(ValueError, match="lead_index 2"):
        a.add(2, members[0, 0], truth[0, 0], clim, w)
    with pytest.raises(ValueError, match="control_member"):
        mt.ScoreAccumulator(["z500"], 2, M, control_member=3)


def test_climatology_tool_picks_the_same_season_and_hour_across_new_year():
    """tools/climatology_crps.py: the climatological ensemble of a time is every training state at its hour
    within the day-of-year window, the window wrapping at new year."""
    tool = load_tool("climatology_crps")
    times = np.arange(np.datetime64("2000-01-01T00"), np.datetime64("2002-01-01T00"), np.timedelta64(6, "h"))
    picked = times[tool.climate_indices(times, np.datetime64("2005-01-02T06"), 3)]
    assert all(t.astype(object).hour == 6 for t in picked)
    days = sorted({(t.astype(object).month, t.astype(object).day) for t in picked})
    assert days == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (12, 30), (12, 31)]
    assert len(picked) == 2 * 7  # in both years (2000 a leap year, 2001 not)


def test_spread_spectrum_tool_puts_spread_and_error_at_their_wavenumbers():
    """tools/spread_spectrum.py: power per zonal wavenumber sums to the area-weighted mean square (Parseval);
    members that differ only at k = 15 about a mean that misses a k = 4 wave have their spread in band 12-19
    (more active than the truth there) and their error in band 3-5."""
    tool = load_tool("spread_spectrum")
    rng = np.random.default_rng(0)
    lat = np.linspace(80.0, -80.0, 9)
    lon = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
    x = rng.standard_normal((3, 9, 64))
    w = mt.lat_weights(lat, "area")
    # Parseval in float64: FFT and sum round-off ~log2(64) * 64 * eps64 ~ 1e-13 (was numpy's default rtol 1e-7)
    np.testing.assert_allclose(tool.zonal_power(x, lat).sum(-1), np.einsum("fl,l->f", (x ** 2).mean(-1), w) / w.sum(),
                               rtol=1e-12)
    truth = np.broadcast_to(np.sin(4 * lon), (2, 9, 64)) + np.sin(2 * lon) + 0.0
    phase = rng.uniform(0, 2 * np.pi, (2, 10, 1, 1))
    phase = np.concatenate([phase, phase + np.pi], axis=1)  # opposite pairs: the mean has no k = 15 wave
    members = np.sin(2 * lon) + 0.5 * np.sin(4 * lon + 0.8) + 0.3 * np.sin(15 * lon + phase)
    bands = {b[0]: b[1:] for b in tool.band_ratios(tool.scale_scores(members, truth, lat))}
    assert bands["12-19"][0] > 10 and bands["12-19"][1] > 10 and bands["12-19"][2] > 0.99
    # waves at whole wavenumbers of a 64-point FFT: no leakage, float64 round-off ~1e-15 (the powers 0.125 / 0.5)
    assert bands["3-5"][0] < 0.01 and bands["3-5"][1] == pytest.approx(0.25, rel=1e-12)
    assert bands["1-2"][1] == pytest.approx(1.0, rel=1e-12)  # the k = 2 wave is right in every member


def test_spread_spectrum_of_a_run_adds_up_to_its_pooled_spread_skill(tmp_path, capsys):
    """The tool on a real (tiny) ensemble run: summed over every wavenumber, spread / error is the run's own
    corrected spread/skill from metrics.json (same area weights, pooling and member correction)."""
    import json
    from ensemble_setup import tiny_config, tiny_dataset
    from hpc_fcn.ensemble.app import EnsembleRun
    from mpi4py import MPI
    tool = load_tool("spread_spectrum")
    cfg = tiny_config(tiny_dataset(tmp_path / "data"), tmp_path / "run", ["ensemble.members=6"])
    EnsembleRun(cfg, MPI.COMM_SELF).run()
    data, lat = tool.read_run(tmp_path / "run", [1, 2], ["u", "z"])
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for d in (1, 2):
        members, truth = data[d]
        assert members.shape[:3] == (2, 6, 2)
        for c, v in enumerate(("u", "z")):
            # in float64 like metrics.json: in float32 the mean's rounding (a few ulp of |x|) biases a spread of
            # only ~200 ulp of |x| (this tiny model barely spreads) by up to ~2e-4 (see the ssr_sampling test)
            s = tool.scale_scores(members[:, :, c].astype(np.float64), truth[:, c].astype(np.float64), lat)
            lead = doc["lead_hours"].index(24 * d)
            # float64 sums of ~1.5e3 terms in another order, and FFTs: n * eps64 ~ 3e-13
            assert np.sqrt(s["spread"].sum() / s["error"].sum()) == pytest.approx(
                doc["scores"]["ssr_corrected"][v][lead], rel=1e-11)
    capsys.readouterr()
    tool.main([str(tmp_path / "run"), "--days", "1", "2", "--vars", "u"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| u |")]
    assert len(rows) == 2 * 6  # bands 0, 1-2, 3-5, 6-11, 12-19, 20-32 of a 64-point row
    # tools/spread_bound.py on the same run: unscaled, its CRPS is metrics.json's (the run as its own reference)
    bound = load_tool("spread_bound")
    for d in (1, 2):
        members, truth = data[d]
        crps = bound.scaled_crps(members[:, :, 1], truth[:, 1], lat)
        lead = doc["lead_hours"].index(24 * d)
        # the tool's float32 mean + 1.0 * (x - mean) restores each member to half an ulp: <= ulp(41) / CRPS(~34) ~ 1e-7
        assert crps[list(bound.SCALES).index(1.0)] == pytest.approx(doc["scores"]["crps"]["z"][lead], rel=1e-5)
    bound.main([str(tmp_path / "run"), "--days", "1", "2", "--vars", "u", "z", "--reference", str(tmp_path / "run")])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith(("| u |", "| z |"))]
    assert len(rows) == 4 and all("(+0.0 %)" in r.split("|")[3] for r in rows), rows


def test_ssr_sampling_rebuilds_the_pooled_ratio_from_a_runs_files(tmp_path, capsys):
    """tools/ssr_sampling.py on a real (tiny) run of 3 initial times: the per-forecast sums it rebuilds from the
    mean and spread files and the split's truths pool to metrics.json's corrected spread/skill, and each
    single forecast's ratio is the run's own with that forecast alone."""
    import json
    from ensemble_setup import tiny_config, tiny_dataset
    from hpc_fcn.ensemble.app import EnsembleRun
    from mpi4py import MPI
    tool = load_tool("ssr_sampling")
    cfg = tiny_config(tiny_dataset(tmp_path / "data"), tmp_path / "run",
                      ["ensemble.members=6", "initial_conditions.count=3"])
    EnsembleRun(cfg, MPI.COMM_SELF).run()
    var, mse, m = tool.per_forecast_sums(tmp_path / "run", [1, 2], ["u", "z"])
    assert var.shape == (3, 2, 2) and m == 6 and (var > 0).all() and (mse > 0).all()
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    full = tool.corrected(var, mse, m)
    for j, d in enumerate((1, 2)):
        lead = doc["lead_hours"].index(24 * d)
        for c, v in enumerate(("u", "z")):
            # the files' float32 mean (rounded by <= ~4 ulp of |x|: a sum of 6, then / 6) biases each variance by
            # M / (M - 1) * its rounding^2; this run's day-2 spread is only ~200 ulp of |x|: <= 2.4e-4 on the ratio
            # (typically ~4e-6; was 1e-5, under the bound)
            assert full[j, c] == pytest.approx(doc["scores"]["ssr_corrected"][v][lead], rel=3e-4)
    one = tool.corrected(var[:1], mse[:1], m)
    np.testing.assert_allclose(one, np.sqrt(7 / 6 * var[0] / mse[0]), rtol=1e-12)  # the same float64 formula
    capsys.readouterr()
    assert tool.main([str(tmp_path / "run"), "--days", "1", "2", "--vars", "u", "--subset", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 subsets of 2" in out and out.count("  u day") == 2, out


def test_ssr_sampling_std_of_a_mean_is_the_textbook_standard_error():
    """The subsets' spread with its factor sqrt(n / (n - k)) is, for a mean of k, exactly s / sqrt(k) (s: the
    sample standard deviation of the n): the estimate of k initial times drawn afresh, not of k of these n."""
    import itertools
    tool = load_tool("ssr_sampling")
    x = np.random.default_rng(5).normal(size=12)
    for k in (2, 4, 7):
        stats = np.array([x[list(s)].mean() for s in itertools.combinations(range(12), k)])
        # an identity; float64 std of <= 792 means: n * eps64 ~ 2e-13
        assert tool.sampling_std(stats, 12, k) == pytest.approx(x.std(ddof=1) / np.sqrt(k), rel=1e-12)


def test_spread_bound_finds_the_factor_that_calibrates_an_under_dispersed_ensemble():
    """tools/spread_bound.py: members drawn like the truth about a shared mean, then with their deviations
    halved, are best rescaled by about 2, which lowers their fair CRPS; at factor 1 it is metrics.crps_fair."""
    tool = load_tool("spread_bound")
    rng = np.random.default_rng(3)
    F, M, R, W = 6, 20, 8, 16
    lat = np.linspace(70.0, -70.0, R)
    mean = rng.normal(size=(F, 1, R, W))
    truth = mean[:, 0] + rng.normal(size=(F, R, W))
    members = mean + 0.5 * rng.normal(size=(F, M, R, W))
    crps = tool.scaled_crps(members, truth, lat)
    best = tool.SCALES[int(np.argmin(crps))]
    assert 1.7 <= best <= 2.3, best
    one = list(tool.SCALES).index(1.0)
    assert crps.min() < 0.95 * crps[one]
    w = mt.lat_weights(lat, "area")
    want = np.mean([mt.weighted_mean(mt.crps_fair(members[f], truth[f]), w) for f in range(F)])
    assert crps[one] == pytest.approx(want, rel=1e-12)  # float64: mean + 1.0 * (x - mean) is x to ~eps64 |x|


def test_spread_bound_measures_and_removes_a_drift_of_the_zonal_mean():
    """tools/spread_bound.py: members drawn like the truth, then all shifted by one latitude profile: the tool
    finds the profile's area-weighted rms and, with it subtracted, scores the unshifted members."""
    tool = load_tool("spread_bound")
    rng = np.random.default_rng(4)
    F, M, R, W = 5, 12, 8, 16
    lat = np.linspace(70.0, -70.0, R)
    truth = rng.normal(size=(F, R, W))
    members = truth[:, None] + rng.normal(size=(F, M, R, W))
    # no drift to begin with: the members' zonal mean over the forecasts is the truth's
    members -= members.mean(axis=(0, 1, 3), keepdims=True) - truth.mean(axis=(0, 2), keepdims=True)[:, None]
    profile = np.linspace(-1.0, 2.0, R)
    rms, undrifted = tool.zonal_drift(members + profile[None, None, :, None], truth, lat)
    w = mt.lat_weights(lat, "area")
    # float64: the profile added and removed again, ~eps64 * |x| per point (was 1e-9)
    assert rms == pytest.approx(np.sqrt(np.sum(w * profile ** 2) / np.sum(w)), rel=1e-12)
    want = np.mean([mt.weighted_mean(mt.crps_fair(members[f], truth[f]), w) for f in range(F)])
    assert undrifted == pytest.approx(want, rel=1e-12)
    drifted = np.mean([mt.weighted_mean(mt.crps_fair(members[f] + profile[None, :, None], truth[f]), w)
                       for f in range(F)])
    assert drifted > 1.1 * undrifted
