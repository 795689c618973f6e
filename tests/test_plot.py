"""Plots of a small synthetic run directory (the expected PNGs, non-empty, of the expected pixel size) and of real
tiny ensemble runs written as netCDF and as zarr; colour maps of signed fields, units on the axes."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from hpc_fcn import plot
from hpc_fcn.io import ForecastWriter, forecast_path

VARS = ["z500", "t2m"]
LEADS = [24, 48, 72, 96, 120]
M = 4
INIT = np.datetime64("2018-01-01T00")


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture
def run_dir(tmp_path):
    lat, lon = np.linspace(90, -90, 9), np.arange(16) * 22.5
    rng = np.random.default_rng(0)
    for product in ("mean", "spread"):
        with ForecastWriter(forecast_path(tmp_path, INIT, product), variables=VARS,
                            units={"z500": "m2 s-2", "t2m": "K"},
                            standard_names={"z500": "geopotential", "t2m": "air_temperature"},
                            long_names={"z500": "geopotential at 500 hPa", "t2m": "2 metre temperature"},
                            lat=lat, lon=lon, init_time=INIT, lead_hours=LEADS, product=product,
                            n_members=M, attrs={}) as w:
            for i in range(len(LEADS)):
                w.write(i, rng.random((len(VARS), lat.size, lon.size)).astype(np.float32))
    grow = lambda a, b: {v: list(np.linspace(a, b, len(LEADS))) for v in VARS}  # noqa: E731
    metrics = {
        "variables": VARS, "lead_hours": LEADS, "members": M,
        "scores": {"rmse": grow(1, 5), "acc": {v: [0.99, 0.95, None, 0.8, 0.7] for v in VARS}, "crps": grow(0.5, 2),
                   "spread": grow(0.8, 4), "ssr": grow(0.8, 0.9),
                   "rank_hist": {v: rng.integers(0, 50, (len(LEADS), M + 1)).tolist() for v in VARS}},
        "persistence": {"rmse": grow(2, 9), "acc": grow(0.9, 0.3)},
        "climatology": {"rmse": grow(7, 7)},
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    return tmp_path


def test_plot_run_writes_every_png(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("plots")
    paths = plot.plot_run(run_dir, variable="t2m", lead="3d", out_dir=out)
    names = sorted(p.name for p in paths)
    assert names == sorted(["map_t2m_072h_20180101T00.png", "skill_rmse.png", "skill_acc.png", "skill_crps.png",
                            "skill_ssr.png", "rank_hist_072h.png"])
    for p in paths:
        assert p.parent == out and p.stat().st_size > 5000
    assert png_size(out / "map_t2m_072h_20180101T00.png") == (1200, 400)
    assert png_size(out / "skill_rmse.png") == (800, 340)  # two 4 x 3 in panels side by side, 0.4 in title, 100 dpi


def test_cli_defaults(run_dir, capsys):
    assert plot.main([str(run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    assert str(run_dir / "plots" / "map_z500_120h_20180101T00.png") in printed
    # one rank histogram per lead, by default the first lead after 0, the middle one and the last
    assert [p for p in printed if "rank_hist" in p] == [str(run_dir / "plots" / f"rank_hist_{h:03d}h.png")
                                                        for h in (24, 72, 120)]


def test_clear_errors(run_dir, tmp_path_factory, capsys):
    with pytest.raises(ValueError, match="not a duration"):
        plot.plot_run(run_dir, lead="5")
    with pytest.raises(ValueError, match="variable 'nope' is not in"):
        plot.plot_run(run_dir, lead="48h", variable="nope")
    with pytest.raises(ValueError, match="lead 7 d is not in"):
        plot.plot_run(run_dir, lead="7d")
    with pytest.raises(ValueError, match="lead 7 d is not in metrics.json; it has 1 d, 2 d"):
        plot.plot_run(run_dir, lead="2d", leads="1d,7d")  # the rank histograms' leads are checked too
    assert plot.main([str(tmp_path_factory.mktemp("empty"))]) == 2
    assert "nothing to plot" in capsys.readouterr().err


@pytest.mark.parametrize("values, signed", [([-3.0, 0.5, 2.0], True),   # u, v, vorticity, anomalies
                                            ([-0.04, 1.0, 5.0], False),  # one sign, a rounding-size negative
                                            ([250.0, 300.0], False), ([-5.0, -1.0], False)])
def test_signed_is_decided_from_the_data(values, signed):
    field = np.array(values)
    assert plot.is_signed(field) is signed
    scale = plot.colour_scale(field)
    if signed:
        assert scale["cmap"] == plot.SIGNED_CMAP and scale["vmin"] == -scale["vmax"] == -max(np.abs(values))
    else:
        assert scale["cmap"] == plot.FIELD_CMAP and (scale["vmin"], scale["vmax"]) == (min(values), max(values))
    assert plot.colour_scale(np.abs(field), spread=True)["vmin"] == 0.0


def test_map_of_a_signed_field_is_centred_on_zero_and_labelled_with_units(tmp_path):
    lat, lon = np.linspace(90, -90, 9), np.arange(16) * 22.5
    wind = 10 * np.sin(np.deg2rad(lon))[None, :] * np.cos(np.deg2rad(lat))[:, None] + 3  # from -7 to 13 m/s
    paths = {}
    for product in ("mean", "spread"):
        paths[product] = forecast_path(tmp_path, INIT, product)
        with ForecastWriter(paths[product], variables=["u", "z"], units={"u": "m s-1", "z": "m2 s-2"},
                            standard_names={"u": "eastward_wind", "z": "geopotential"},
                            long_names={"u": "eastward wind", "z": "geopotential"}, lat=lat, lon=lon,
                            init_time=INIT, lead_hours=[0, 24], product=product, n_members=M, attrs={}) as w:
            for i in range(2):
                w.write(i, np.stack([wind, 5e4 + 100 * wind]).astype(np.float32))
    for var, cmap in (("u", plot.SIGNED_CMAP), ("z", plot.FIELD_CMAP)):
        fig, meta = plot.draw_maps(paths["mean"], paths["spread"], variable=var)
        mean_mesh, spread_mesh = fig.axes[0].collections[0], fig.axes[1].collections[0]
        assert mean_mesh.get_cmap().name == cmap and spread_mesh.get_cmap().name == plot.SPREAD_CMAP
        if var == "u":
            assert mean_mesh.norm.vmin == -mean_mesh.norm.vmax == -13.0  # at lon 90, lat 0: exact in float32
        assert spread_mesh.norm.vmin == 0
        labels = [ax.get_xlabel() + ax.get_ylabel() for ax in fig.axes]
        assert "m s-1" in labels[2] if var == "u" else "m2 s-2" in labels[2]  # the colour bars name the units
        assert all("degrees" in t for t in labels[:2])
        plot.plt.close(fig)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """One real tiny ensemble run (1 initial time, leads 0-48 h every 12 h) per output format."""
    from ensemble_setup import tiny_config, tiny_dataset
    from mpi4py import MPI

    from hpc_fcn.ensemble.app import EnsembleRun
    root = tmp_path_factory.mktemp("runs")
    data = tiny_dataset(root / "data")
    for fmt in ("netcdf", "zarr"):
        EnsembleRun(tiny_config(data, root / fmt, ["initial_conditions.count=1", f"output.format={fmt}"]),
                    MPI.COMM_SELF).run()
    return root


@pytest.mark.parametrize("fmt, suffix", [("netcdf", ".nc"), ("zarr", ".zarr")])
def test_a_netcdf_and_a_zarr_run_plot_alike(tiny_runs, fmt, suffix, capsys):
    run = tiny_runs / fmt
    mean, _ = plot.find_forecasts(run)
    assert mean.suffix == suffix
    stamp = mean.name.split("_")[1]  # the first initial time, YYYYmmddTHH
    out = run / "plots_v"
    assert plot.main([str(run), "--variable", "v", "--lead", "1d", "--leads", "12h,2d", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"map_v_024h_{stamp}.png", "skill_rmse.png", "skill_acc.png", "skill_crps.png", "skill_ssr.png",
         "rank_hist_012h.png", "rank_hist_048h.png"])
    assert png_size(out / f"map_v_024h_{stamp}.png") == (1200, 400)
    assert plot.main([str(run), "--variable", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: variable 'nope' is not in {mean.name}; it has u, v, z"]


def test_skill_axes_carry_units_and_spread_skill_starts_after_lead_0(tiny_runs):
    run = tiny_runs / "zarr"
    metrics = plot.load_metrics(run / "metrics.json")
    assert metrics["lead_hours"][0] == 0
    figures = plot.draw_skill(metrics, plot.output_units(plot.find_forecasts(run)[0]))
    assert sorted(figures) == ["acc", "crps", "rmse", "ssr"]
    want = {"rmse": "RMSE ({})", "crps": "fair CRPS ({})", "acc": "ACC (dimensionless)",
            "ssr": "spread / RMSE of the mean (ratio)"}
    for name, fig in figures.items():
        for ax, var in zip(fig.axes, metrics["variables"]):
            assert ax.get_xlabel() == "lead (hours)"  # a 2-day run: leads in hours
            assert ax.get_ylabel() == want[name].format(f"unit_{var}")  # tests/helpers_layout.py's units
            assert ax.lines[0].get_xdata()[0] == (12 if name == "ssr" else 0)  # the ratio starts after lead 0
        plot.plt.close(fig)
    days, label = plot.lead_axis([0, 24, 240])
    assert label == "lead (days)" and list(days) == [0, 1, 10]


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")  # zarr on writing v3 consolidated
def test_a_weatherbench2_store_plots_a_variable_on_levels(tmp_path):
    """output.convention: wb2 names (latitude, longitude, prediction_timedelta) and a level dimension: --level picks
    the map's level; skill axes find the channels' units under WB2's names (z850 -> geopotential)."""
    import xarray as xr
    lat, lon, levels = np.linspace(90, -90, 9), np.arange(16) * 22.5, [500, 850]
    rng = np.random.default_rng(1)
    paths = {}
    for product in ("mean", "spread"):
        values = rng.random((1, 2, len(levels), lat.size, lon.size)).astype(np.float32) + np.array(levels)[:, None, None]
        ds = xr.Dataset({"geopotential": (("time", "prediction_timedelta", "level", "latitude", "longitude"), values,
                                          {"units": "m2 s-2", "long_name": "geopotential"})},
                        coords={"time": [np.datetime64("2018-01-01T00", "ns")], "level": levels, "latitude": lat,
                                "longitude": lon,
                                "prediction_timedelta": np.array([0, 24], "timedelta64[h]").astype("timedelta64[ns]")})
        paths[product] = tmp_path / f"forecast_20180101T00_{product}.zarr"
        ds.to_zarr(paths[product], consolidated=True)
        if product == "mean":
            at_850 = values[0, 1, 1]
    fig, meta = plot.draw_maps(paths["mean"], paths["spread"], variable="geopotential", level=850)
    np.testing.assert_array_equal(fig.axes[0].collections[0].get_array().reshape(at_850.shape), at_850)
    assert meta["name"] == "geopotential850" and meta["long_name"] == "geopotential at 850 hPa"
    plot.plt.close(fig)
    with pytest.raises(ValueError, match="level 700 hPa is not in geopotential of forecast_20180101T00_mean.zarr; "
                                         "it has 500, 850"):
        plot.draw_maps(paths["mean"], paths["spread"], level=700)
    units = plot.channel_units(plot.output_units(paths["mean"]), ["z500", "z850"])
    assert units == {"geopotential": "m2 s-2", "z500": "m2 s-2", "z850": "m2 s-2"}
