"""Probability products: the config's ``products:`` section, the product and score functions against NumPy, and
the score sums' round trip through a resume snapshot's plain arrays."""
import io

import numpy as np
import pytest

from hpc_fcn.config import ConfigError, from_dict
from hpc_fcn.ensemble.config import EnsembleConfig, ProductsConfig
from hpc_fcn.ensemble.probabilities import ProbabilityProducts
from hpc_fcn.metrics import (ProbabilityAccumulator, ensemble_quantiles, exceedance_probability, pinball_loss,
                             reliability_counts)


def products(data):
    return from_dict(ProductsConfig, data)


@pytest.mark.parametrize("data, key", [
    ({"quantiles": [0.5, 0.1]}, "products.quantiles"),
    ({"quantiles": [0.1, 0.1]}, "products.quantiles"),
    ({"quantiles": [0.0, 0.5]}, "products.quantiles[0]"),
    ({"quantiles": [0.5, 1.0]}, "products.quantiles[1]"),
    ({"probabilities": {"u10": {"over": [1.0]}}}, "products.probabilities.u10.over"),
    ({"probabilities": {"u10": {"above": []}}}, "products.probabilities.u10.above"),
    ({"probabilities": {"u10": {}}}, "products.probabilities.u10"),
    ({"probabilities": {"u10": {"above": [15.0, 10.0]}}}, "products.probabilities.u10.above"),
    ({"probabilities": {"u10": {"above": [float("nan")]}}}, "products.probabilities.u10.above[0]"),
    ({"probabilities": {"u10": {"below": ["x"]}}}, "products.probabilities.u10.below[0]"),
    ({"probabilities": {"u10": [15.0]}}, "products.probabilities.u10"),
])
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=rf"config key '{__import__('re').escape(key)}'"):
        from_dict(EnsembleConfig, {"products": data})


def test_config_channel_must_be_a_model_channel():
    cfg = products({"probabilities": {"u10": {"above": [15.0]}, "t2m": {"below": [250.0]}}})
    cfg.check_channels(["u10", "t2m"])
    with pytest.raises(ConfigError, match=r"'products.probabilities.t2m': 't2m' is not a model channel"):
        cfg.check_channels(["u10", "v10"])


def test_config_default_is_off_and_overrides_parse():
    assert not EnsembleConfig().products.enabled
    cfg = from_dict(EnsembleConfig, {}, ["products.probabilities={u10: {above: [10, 15]}, t850: {below: [250]}}",
                                         "products.quantiles=[0.1, 0.5, 0.9]"])
    assert cfg.products.enabled and cfg.products.quantiles == [0.1, 0.5, 0.9]
    p = ProbabilityProducts(cfg.products, ["u10", "t850"], ["u10", "t850"], 8)
    assert p.event_names() == ["u10>10", "u10>15", "t850<250"]
    assert p.products == ("probability", "quantile")


@pytest.mark.parametrize("M", [1, 2, 5, 16])
def test_quantiles_are_numpy_linear_rounded_to_float32(M):
    x = (np.random.default_rng(M).normal(size=(M, 2, 7, 9)) * 5 + 280).astype(np.float32)
    levels = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    got = ensemble_quantiles(x, levels)
    assert got.dtype == np.float32
    # the same float64 operations as NumPy's, then one rounding to float32: equal
    np.testing.assert_array_equal(got, np.quantile(x, levels, axis=0).astype(np.float32))


def test_probabilities_count_strict_exceedance():
    x = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 0.0], [2.0, 5.0]], np.float32)[:, :, None]  # (4, 2, 1)
    np.testing.assert_array_equal(exceedance_probability(x, [2.0], True)[0, :, 0], [0.25, 0.25])
    np.testing.assert_array_equal(exceedance_probability(x, [2.0], False)[0, :, 0], [0.25, 0.25])
    np.testing.assert_array_equal(exceedance_probability(x, [0.5, 10.0], True)[:, :, 0], [[1.0, 0.75], [0, 0]])


def test_pinball_loss():
    np.testing.assert_allclose(pinball_loss(np.array([1.0, 3.0]), np.array([2.0, 2.0]), 0.9), [0.9, 0.1])


def test_reliability_counts_bin_points_by_member_count():
    rng = np.random.default_rng(0)
    M, r, c = 4, 5, 6
    p = rng.integers(0, M + 1, size=(2, r, c)) / M
    o = rng.random((2, r, c)) < 0.5
    w = rng.random(r) + 0.5
    got = reliability_counts(p, o, w, M)
    for t in range(2):
        k = np.rint(p[t] * M).astype(int)
        ww = np.broadcast_to(w[:, None], (r, c))
        for b in range(M + 1):
            sel = k == b
            np.testing.assert_allclose(got[t, b], [ww[sel].sum(), (ww * o[t])[sel].sum(), sel.sum()], rtol=1e-12)


def accumulate(seed=0, leads=3, M=5):
    rng = np.random.default_rng(seed)
    acc = ProbabilityAccumulator(["u>0", "u<1"], ["u", "v"], [0.1, 0.9], leads, M)
    for li in range(leads):
        for _ in range(2):  # two initial times
            m = rng.normal(size=(M, 2, 4, 6)).astype(np.float32)
            o = rng.normal(size=(2, 4, 6))
            prob = np.concatenate([exceedance_probability(m[:, 0], [0.0], True),
                                   exceedance_probability(m[:, 0], [1.0], False)])
            ev = np.stack([o[0] > 0, o[0] < 1]).astype(np.float64)
            acc.add(li, prob, ev, ensemble_quantiles(m, [0.1, 0.9]), o, np.linspace(0.5, 1.5, 4))
    return acc


def test_accumulator_brier_equals_direct_mean():
    rng = np.random.default_rng(0)
    acc = ProbabilityAccumulator(["e"], [], [], 1, 3)
    want = []
    for _ in range(3):
        p = rng.integers(0, 4, size=(1, 4, 6)) / 3
        o = (rng.random((1, 4, 6)) < 0.3).astype(np.float64)
        w = np.linspace(0.5, 1.5, 4)
        acc.add(0, p, o, np.zeros((0, 0, 4, 6)), np.zeros((0, 4, 6)), w)
        want.append((w[:, None] * (p[0] - o[0]) ** 2).sum() / (w.sum() * 6))
    np.testing.assert_allclose(acc.reduce()["brier"][0, 0], np.mean(want), rtol=1e-12)


def test_accumulator_round_trips_through_plain_arrays():
    """A resume snapshot's scores.npz: saved and read without pickle, the scores are unchanged."""
    acc = accumulate()
    buf = io.BytesIO()
    np.savez(buf, **acc.to_arrays())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        back = ProbabilityAccumulator.from_arrays(dict(z))
    a, b = acc.reduce(), back.reduce()
    for k in ("brier", "pinball", "reliability", "count"):
        np.testing.assert_array_equal(a[k], b[k])
    assert back.events == acc.events and back.levels == acc.levels
    zero = acc.zeroed().reduce()
    assert zero["count"].tolist() == a["count"].tolist() and not np.any(zero["reliability"])
    with pytest.raises(ValueError, match="reliability table"):
        ProbabilityAccumulator.from_arrays(dict(acc.to_arrays(), reliability=np.zeros((1, 1))))


def test_products_and_their_scores_survive_a_resume(tmp_path):
    """Killed after a snapshot and resumed (2 ranks, zarr), the products and their scores equal the
    uninterrupted run's."""
    import json
    from pathlib import Path

    from ensemble_setup import command, kill_after_snapshot, run_cli, tiny_config, tiny_dataset

    from hpc_fcn.config import dump_yaml
    data = tiny_dataset(tmp_path / "data")
    over = ["initial_conditions.count=1", "forecast.lead_time=2d", "ensemble.members=5", "output.format=zarr",
            "forecast.snapshot_every=1", "parallel.ensemble=2",
            "products.probabilities={u: {above: [20.0]}, z: {below: [40.0]}}", "products.quantiles=[0.25, 0.5]"]
    cfg = tmp_path / "run.yaml"
    cfg.write_text(dump_yaml(tiny_config(data, tmp_path / "full", over)))
    assert run_cli(2, cfg).returncode == 0
    killed = tmp_path / "killed"
    kill_after_snapshot(command(2, cfg, f"output.dir={killed}", "resume=true"), killed, 0, 2)
    done = run_cli(2, cfg, f"output.dir={killed}", "resume=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming at initial time 1 of 1 after step" in done.stderr  # from the snapshot, not from the start
    import zarr
    for product, names in (("probability", ["probability_of_u_above_threshold", "probability_of_z_below_threshold"]),
                           ("quantile", ["u", "v", "z"])):
        for p in sorted(Path(tmp_path / "full").glob(f"forecast_*_{product}.zarr")):
            a, b = zarr.open_group(p, mode="r"), zarr.open_group(killed / p.name, mode="r")
            assert b.attrs["leads_complete"] == len(a.attrs["lead_hours"])
            for n in names:  # the same members on the same layout: identical values
                np.testing.assert_array_equal(b[n][...], a[n][...], err_msg=f"{p.name} {n}")
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["probabilistic"]
    resumed = json.loads((killed / "metrics.json").read_text())["probabilistic"]
    assert resumed["reliability"]["count"] == full["reliability"]["count"]
    for e in full["brier"]:  # float64 sums added in another order: ~1e-16 relative
        np.testing.assert_allclose(resumed["brier"][e], full["brier"][e], rtol=1e-12)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    """A tiny serial run with probability products (netCDF), in this process."""
    from mpi4py import MPI

    from ensemble_setup import tiny_config, tiny_dataset

    from hpc_fcn.ensemble.app import EnsembleRun
    tmp = tmp_path_factory.mktemp("products")
    over = ["products.probabilities={u: {above: [20.0]}, z: {below: [40.0, 60.0]}}", "products.quantiles=[0.1, 0.9]",
            "initial_conditions.count=1", "initial_conditions.start=2002-01-03T00"]
    doc = EnsembleRun(tiny_config(tiny_dataset(tmp / "data"), tmp / "out", over), MPI.COMM_WORLD).run()
    return tmp / "out", doc


def test_cf_layout_of_the_products(serial_run):
    """Thresholds are coordinates with the channel's units and standard_name, probabilities have units 1, and
    quantiles lie along a ``quantile`` dimension coordinate."""
    import netCDF4
    out, _ = serial_run
    with netCDF4.Dataset(next(out.glob("forecast_*_probability.nc"))) as ds:
        assert ds.product == "probability" and ds.Conventions.startswith("CF-")
        v = ds["probability_of_z_below_threshold"]
        assert v.dimensions == ("threshold_z_below", "time", "lead_time", "lat", "lon") and v.units == "1"
        t = ds["threshold_z_below"]
        assert t[:].tolist() == [40.0, 60.0]
        assert t.units == "unit_z" and t.standard_name == "standard_z" and t.spp__relative_to_threshold == "less_than"
        assert ds["threshold_u_above"].spp__relative_to_threshold == "greater_than"
    with netCDF4.Dataset(next(out.glob("forecast_*_quantile.nc"))) as ds:
        assert ds.product == "quantile" and ds["quantile"][:].tolist() == [0.1, 0.9] and ds["quantile"].units == "1"
        assert ds["u"].dimensions[0] == "quantile" and ds["u"].units == "unit_u" and "linear" in ds["u"].comment


def test_plots_of_the_products(serial_run, tmp_path):
    from hpc_fcn.plot import load_metrics, plot_probability_products  # plot_run draws these after the others
    out, doc = serial_run
    written = {p.name for p in plot_probability_products(out, load_metrics(out / "metrics.json"), tmp_path,
                                                         variable="z")}
    assert {"reliability_048h.png", "probabilistic_skill.png"} <= written
    assert any(n.startswith("probability_048h_") for n in written)
    assert any(n.startswith("quantiles_z_048h_") for n in written)
    assert all((tmp_path / n).stat().st_size > 1000 for n in written)
    assert set(doc["probabilistic"]["brier"]) == {"u>20", "z<40", "z<60"}
    table = (out / "metrics.md").read_text()
    assert "| z<40 | Brier |" in table and "| u | pinball q0.9 |" in table
