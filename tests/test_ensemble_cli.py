"""The ensemble program as users run it: clear errors without hangs, resume after a kill, CF output."""
import json
import time
import warnings
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
import yaml

from ensemble_setup import command, error_lines, kill_after_snapshot, run_cli, tiny_config, tiny_dataset

from hpc_fcn.config import dump_yaml


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ens")
    data = tiny_dataset(tmp / "data")
    cfg = tiny_config(data, tmp / "out", ["output.members=false"])
    path = tmp / "tiny.yaml"
    path.write_text(dump_yaml(cfg))
    return tmp, path


@pytest.mark.parametrize("n, overrides, expected", [
    (2, ["ensemble.memebers=3"], "error: config key 'ensemble.memebers': unknown key (did you mean 'members'?)"),
    (2, ["parallel.h=4", "parallel.ensemble=1"], "error: config key 'parallel"),
    (2, ["data.root=/nonexistent/era5"], "error: config key 'data.root': /nonexistent/era5 is not a directory"),
    (1, ["forecast.lead_time=3x"], "error: config key 'forecast.lead_time'"),
    (2, ["ensemble.members=1", "parallel.ensemble=2"], "error: config key 'ensemble.members'"),
])
def test_bad_input_is_one_clear_line_on_every_rank_count(setup, n, overrides, expected):
    _, cfg = setup
    proc = run_cli(n, cfg, *overrides, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr


def test_nan_in_the_initial_condition_stops_without_hanging(setup, tmp_path):
    tmp, _ = setup
    data = tiny_dataset(tmp_path / "data")
    with h5py.File(data / "out_of_sample" / "2002.h5", "r+") as f:
        f["fields"][0, 2, 25, 10] = np.nan  # a row only the second h-rank reads
    cfg = tiny_config(data, tmp_path / "out", ["initial_conditions.count=1"])
    path = tmp_path / "nan.yaml"
    path.write_text(dump_yaml(cfg))
    t0 = time.monotonic()
    proc = run_cli(2, path, "parallel.h=2", "parallel.ensemble=1", timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 100
    msg = "\n".join(error_lines(proc))
    assert "NaN" in msg and "2002.h5" in msg, proc.stderr


def _outputs(outdir):
    """Every forecast file or store of a run: {name: {variable: values}}."""
    import xarray as xr
    files = {}
    for f in sorted(Path(outdir).glob("forecast_*.nc")):
        with netCDF4.Dataset(f) as ds:
            files[f.name] = {v: np.asarray(ds[v][:]) for v in ("u", "v", "z")}
    for f in sorted(Path(outdir).glob("forecast_*.zarr")):
        ds = xr.open_zarr(f, consolidated=True, decode_timedelta=True)
        assert ds.attrs["leads_complete"] == ds.sizes["lead_time"], f
        files[f.name] = {v: np.ma.masked_invalid(ds[v].values) for v in ("u", "v", "z")}
    return files


def test_killed_run_resumes_to_identical_outputs(setup, tmp_path):
    tmp, _ = setup
    over = ["initial_conditions.count=3", "forecast.lead_time=3d", "ensemble.members=4", "output.members=true",
            "forecast.snapshot_every=1"]
    cfg = tiny_config(tmp / "data", tmp_path / "full", over)
    full_cfg = tmp_path / "full.yaml"
    full_cfg.write_text(dump_yaml(cfg))
    assert run_cli(2, full_cfg).returncode == 0
    assert not (tmp_path / "full" / ".resume" / "progress.json").exists()  # no snapshots without resume
    killed = tmp_path / "killed"
    kill_after_snapshot(command(2, full_cfg, f"output.dir={killed}", "resume=true"), killed, 1, 2)
    assert not (killed / "metrics.json").exists()
    resumed = run_cli(2, full_cfg, f"output.dir={killed}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _outputs(tmp_path / "full"), _outputs(killed)
    assert a.keys() == b.keys() and len(a) == 9
    for name in a:
        for v in a[name]:
            np.testing.assert_array_equal(b[name][v], a[name][v], err_msg=f"{name} {v}")
    ma = json.loads((tmp_path / "full" / "metrics.json").read_text())
    mb = json.loads((killed / "metrics.json").read_text())
    assert ma["scores"] == mb["scores"] and ma["persistence"] == mb["persistence"]


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_run_killed_on_4_ranks_resumes_on_2_ranks_in_another_layout(setup, tmp_path, fmt):
    """Killed on h=2 x ensemble=2, resumed on ensemble=2: the outputs and scores of an uninterrupted run."""
    tmp, _ = setup
    over = ["initial_conditions.count=1", "forecast.lead_time=3d", "ensemble.members=4", "output.members=true",
            f"output.format={fmt}", "forecast.snapshot_every=1"]
    cfg = tmp_path / "run.yaml"
    cfg.write_text(dump_yaml(tiny_config(tmp / "data", tmp_path / "full", over)))
    h2e2 = ["parallel.h=2", "parallel.ensemble=2"]
    full = run_cli(4, cfg, *h2e2)
    assert full.returncode == 0, full.stderr
    killed = tmp_path / "killed"
    kill_after_snapshot(command(4, cfg, *h2e2, f"output.dir={killed}", "resume=true"), killed, 0, 2)
    marker = json.loads((killed / ".resume" / "progress.json").read_text())
    assert marker["init_pos"] == 0 and 2 <= marker["step"] < 12 and marker["leads_complete"] >= 2
    resumed = run_cli(2, cfg, "parallel.ensemble=2", f"output.dir={killed}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _outputs(tmp_path / "full"), _outputs(killed)
    assert a.keys() == b.keys() and len(a) == 3
    for name in a:
        for v in a[name]:  # later steps ran on another layout: fp32 reduction order, relative to the field's scale
            np.testing.assert_allclose(b[name][v], a[name][v], rtol=1e-5, atol=1e-5 * np.abs(a[name][v]).max(),
                                       err_msg=f"{name} {v}")
    ma = json.loads((tmp_path / "full" / "metrics.json").read_text())
    mb = json.loads((killed / "metrics.json").read_text())
    for score in ("rmse", "acc", "crps", "spread"):
        # the fields' round-off relative to the score's scale; rtol 1e-4: spread and CRPS take differences of
        # near-equal members, which amplify the fields' relative error
        for v in ("u", "v", "z"):
            want = np.array(ma["scores"][score][v], float)
            np.testing.assert_allclose(np.array(mb["scores"][score][v], float), want, rtol=1e-4,
                                       atol=1e-5 * np.nanmax(np.abs(want)), equal_nan=True, err_msg=f"{score} {v}")
    for score, per_var in ma["persistence"].items():  # float64 sums of ~2e3 grid points in another order: ~2e-13
        for v, values in per_var.items():
            np.testing.assert_allclose(np.array(mb["persistence"][score][v], float), np.array(values, float),
                                       rtol=1e-10, equal_nan=True, err_msg=f"persistence {score} {v}")


def test_output_is_cf_and_decodes_with_xarray(setup):
    import xarray as xr
    tmp, cfg = setup
    proc = run_cli(1, cfg, f"output.dir={tmp / 'cf'}", "initial_conditions.count=1")
    assert proc.returncode == 0, proc.stderr
    mean = sorted((tmp / "cf").glob("forecast_*_mean.nc"))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_dataset(mean, decode_timedelta=True)
    assert ds.attrs["Conventions"].startswith("CF-1.10")
    for v in ("u", "v", "z"):
        assert {"units", "long_name"} <= set(ds[v].attrs)
    assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["units"] == "degrees_east"
    assert ds.sizes["lead_time"] == 5 and ds.sizes["lat"] == 32 and ds.sizes["lon"] == 64
    resolved = yaml.safe_load((tmp / "cf" / "config.resolved.yaml").read_text())
    assert resolved["output"]["dir"] == str(tmp / "cf")
    metrics = json.loads((tmp / "cf" / "metrics.json").read_text())
    assert metrics["members"] == 5 and len(metrics["lead_hours"]) == 5
