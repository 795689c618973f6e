"""Plots of a small synthetic run directory: the expected PNGs, non-empty, of the expected pixel size."""
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
    assert str(run_dir / "plots" / "rank_hist.png") in printed


def test_clear_errors(run_dir, tmp_path_factory, capsys):
    with pytest.raises(ValueError, match="not a duration"):
        plot.plot_run(run_dir, lead="5")
    with pytest.raises(ValueError, match="variable 'nope' is not in"):
        plot.plot_run(run_dir, lead="48h", variable="nope")
    with pytest.raises(ValueError, match="lead 7 d is not in"):
        plot.plot_run(run_dir, lead="7d")
    assert plot.main([str(tmp_path_factory.mktemp("empty"))]) == 2
    assert "nothing to plot" in capsys.readouterr().err
