"""output.convention=wb2: zarr stores with WeatherBench2's names, dimensions and level split, holding the values of
the default convention's stores."""
import numpy as np
import pytest

from ensemble_setup import tiny_config
from helpers_layout import write_layout

from hpc_fcn.data.era5 import ERA5_ATTRS
from hpc_fcn.io.wb2 import wb2_name

CHANNELS = ["u10", "t2m", "z500", "t850", "z850", "r500"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same small run (3 members, members written) as zarr in the default and in WB2's convention."""
    from mpi4py import MPI

    from hpc_fcn.ensemble.app import EnsembleRun
    tmp = tmp_path_factory.mktemp("wb2")
    meta = {key: {n: ERA5_ATTRS[n][i] for n in CHANNELS} for i, key in enumerate(("units", "standard_names",
                                                                                  "long_names"))}
    write_layout(tmp / "data", splits={"train": [2000], "test": [2001], "out_of_sample": [2002]}, steps=12,
                 channels=CHANNELS, rows=33, cols=64, metadata=meta)
    for conv in ("cf", "wb2"):
        cfg = tiny_config(tmp / "data", tmp / conv, ["ensemble.members=3", "initial_conditions.count=1",
                                                     "forecast.lead_time=1d", "output.format=zarr",
                                                     f"output.convention={conv}"])
        EnsembleRun(cfg, MPI.COMM_SELF).run()
    return tmp


def test_channel_names_map_to_weatherbench2s():
    assert wb2_name("z500") == ("geopotential", 500) and wb2_name("t850") == ("temperature", 850)
    assert wb2_name("u10") == ("10m_u_component_of_wind", None) and wb2_name("t2m") == ("2m_temperature", None)
    assert wb2_name("msl") == ("mean_sea_level_pressure", None) and wb2_name("sp") == ("surface_pressure", None)
    assert wb2_name("tcwv") == ("total_column_water_vapour", None) and wb2_name("r500") == ("relative_humidity", 500)
    assert wb2_name("vo") == ("vo", None) and wb2_name("u") == ("u", None)  # the built-in world keeps its names


@pytest.mark.parametrize("product", ["mean", "spread", "members"])
def test_wb2_stores_have_its_layout_and_the_default_values(runs, product):
    import xarray as xr
    path = next((runs / "wb2").glob(f"forecast_*_{product}.zarr"))
    ref = xr.open_zarr(next((runs / "cf").glob(f"forecast_*_{product}.zarr")), decode_timedelta=True).load()
    ds = xr.open_zarr(path).load()  # as WB2's evaluation opens it: no options
    ens = ("number",) if product == "members" else ()
    assert set(ds.data_vars) == {"10m_u_component_of_wind", "2m_temperature", "geopotential", "temperature",
                                 "relative_humidity"}
    assert ds.geopotential.dims == ("time",) + ens + ("prediction_timedelta", "level", "latitude", "longitude")
    assert ds["2m_temperature"].dims == ("time",) + ens + ("prediction_timedelta", "latitude", "longitude")
    np.testing.assert_array_equal(ds.level, [500, 850])
    assert ds.level.attrs["units"] == "hPa" and ds.geopotential.attrs["units"] == "m2 s-2"
    np.testing.assert_array_equal(ds.prediction_timedelta, ref.lead_time.values)
    assert ds.prediction_timedelta.dtype.kind == "m" and ds.time.dtype.kind == "M"
    np.testing.assert_array_equal(ds.time, ref.time)
    np.testing.assert_array_equal(ds.latitude, ref.lat)
    np.testing.assert_array_equal(ds.longitude, ref.lon)
    for c in CHANNELS:
        name, level = wb2_name(c)
        got = ds[name] if level is None else ds[name].sel(level=level)
        want = ref[c].transpose("time", "realization", ...) if product == "members" else ref[c]
        np.testing.assert_array_equal(got.values, want.values, err_msg=c)  # the same floats, moved
    # levels a quantity lacks read as missing (NaN): temperature has no 500 hPa channel here
    assert np.isnan(ds.temperature.sel(level=500)).all() and not np.isnan(ds.temperature.sel(level=850)).any()
    if product == "members":
        np.testing.assert_array_equal(ds.number, np.arange(3))
    # what WB2's open_source_files(by_init=True) does next: latitude made increasing, its time conventions applied
    fc = ds.sel(latitude=ds.latitude.values[::-1]).rename(prediction_timedelta="lead_time", time="init_time")
    np.testing.assert_array_equal((fc.init_time + fc.lead_time).values, ref.valid_time.values)


def test_wb2_needs_zarr():
    from hpc_fcn.config import ConfigError, from_dict
    from hpc_fcn.ensemble.config import EnsembleConfig
    with pytest.raises(ConfigError, match="output.convention.*output.format=zarr"):
        from_dict(EnsembleConfig, {}, ["output.convention=wb2"])
