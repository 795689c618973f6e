"""The CF forecast writer: windows in any order, CF metadata, xarray decoding without warnings, resume."""
from __future__ import annotations

import warnings

import netCDF4
import numpy as np
import pytest

from hpc_fcn.io import ForecastWriter, forecast_path, partial_path

VARS = ["z500", "t2m", "u10"]
META = dict(
    variables=VARS,
    units={"z500": "m2 s-2", "t2m": "K", "u10": "m s-1"},
    standard_names={"z500": "geopotential", "t2m": "air_temperature", "u10": "eastward_wind"},
    long_names={"z500": "geopotential at 500 hPa", "t2m": "2 metre temperature", "u10": "10 metre eastward wind"},
)
NLAT, NLON, M = 7, 10, 5
LAT = np.linspace(90, -90, NLAT)
LON = np.arange(NLON) * 36.0
INIT = np.datetime64("2018-01-02T06")
LEADS = [0, 6, 12, 24]
ROW_CUTS = [slice(0, 3), slice(3, 4), slice(4, 7)]  # uneven
COL_CUTS = [slice(0, 6), slice(6, 10)]


def source(product: str, seed: int = 0) -> np.ndarray:
    """(lead, [member,] C, lat, lon) float32 values to write."""
    rng = np.random.default_rng(seed)
    shape = (len(LEADS), M, len(VARS), NLAT, NLON) if product == "members" else (len(LEADS), len(VARS), NLAT, NLON)
    return (rng.standard_normal(shape) * 100 + 250).astype(np.float32)


def make(tmp_path, product, **kw):
    path = forecast_path(tmp_path, INIT, product)
    return ForecastWriter(path, lat=LAT, lon=LON, init_time=INIT, lead_hours=LEADS, product=product,
                          n_members=M, attrs={"seed": 1234, "perturbation_method": "gaussian",
                                              "perturbation_amplitude": 0.3, "config": "a: 1\n"}, **META, **kw)


def windows(product: str, rng):
    """Every (rows, cols, members) window of one lead, shuffled; members split unevenly too."""
    member_cuts = [slice(0, 2), slice(2, 5)] if product == "members" else [None]
    w = [(r, c, m) for r in ROW_CUTS for c in COL_CUTS for m in member_cuts]
    rng.shuffle(w)
    return w


def write_leads(writer, src, product, leads, rng):
    for lead in leads:
        for r, c, m in windows(product, rng):
            block = src[lead][m, :, r, c] if m is not None else src[lead][:, r, c]
            writer.write(lead, block, rows=r, cols=c, members=m)


def read_values(path, product):
    with netCDF4.Dataset(path) as ds:
        arrs = [np.ma.filled(ds.variables[v][:], np.nan) for v in VARS]
    if product == "members":  # (M, 1, L, lat, lon) -> (L, M, C, lat, lon)
        return np.stack(arrs, axis=3)[:, 0].transpose(1, 0, 2, 3, 4)
    return np.stack(arrs, axis=2)[0]  # C x (1, L, lat, lon) -> (L, C, lat, lon)


@pytest.mark.parametrize("product", ["mean", "spread", "members"])
def test_windows_in_any_order_round_trip(tmp_path, product):
    src = source(product)
    rng = np.random.default_rng(1)
    with make(tmp_path, product) as w:
        order = list(range(len(LEADS)))
        rng.shuffle(order)
        write_leads(w, src, product, order, rng)
        assert w.complete
    path = forecast_path(tmp_path, INIT, product)
    assert path.exists() and not partial_path(path).exists()
    np.testing.assert_array_equal(read_values(path, product), src)


@pytest.mark.parametrize("product", ["mean", "spread", "members"])
def test_cf_attributes(tmp_path, product):
    with make(tmp_path, product) as w:
        write_leads(w, source(product), product, range(len(LEADS)), np.random.default_rng(0))
    with netCDF4.Dataset(forecast_path(tmp_path, INIT, product)) as ds:
        g = ds.__dict__
        assert g["Conventions"] == "CF-1.10"
        assert "institution" not in g  # CF's optional attribute: only when the run names one (output.institution)
        for key in ("title", "source", "history", "date_created", "software_versions"):
            assert isinstance(g[key], str) and g[key]
        assert "FourCastNet AFNO" in g["source"] and "torch" in g["software_versions"]
        assert g["seed"] == 1234 and g["perturbation_method"] == "gaussian" and g["config"] == "a: 1\n"
        assert g["leads_complete"] == len(LEADS) and g["product"] == product
        assert ds.variables["lat"].axis == "Y" and ds.variables["lat"].units == "degrees_north"
        assert ds.variables["lon"].axis == "X" and ds.variables["lon"].units == "degrees_east"
        assert ds.variables["lat"].standard_name == "latitude" and ds.variables["lon"].standard_name == "longitude"
        assert ds.variables["time"].standard_name == "time"  # the initial time (CF checkers: see cf.coordinates)
        assert ds.variables["lead_time"].standard_name == "forecast_period"
        assert ds.variables["lead_time"].units == "hours"
        assert ds.variables["valid_time"].standard_name == "time"
        assert ds.variables["valid_time"].dimensions == ("time", "lead_time")
        expect_dims = ("time", "lead_time", "lat", "lon")
        if product == "members":
            expect_dims = ("realization",) + expect_dims
            assert ds.variables["realization"].standard_name == "realization"
        else:  # the scalar coordinate that cell_methods names
            assert ds.variables["realization"].dimensions == () and ds.variables["realization"][...] == -1
        for name in VARS:
            v = ds.variables[name]
            assert v.dimensions == expect_dims and v.dtype == np.float32
            assert v.units == META["units"][name]
            assert v.standard_name == META["standard_names"][name]
            assert v.long_name == META["long_names"][name]
            assert v.coordinates == ("valid_time" if product == "members" else "valid_time realization")
            assert v._FillValue == v.missing_value
            assert v.filters()["zlib"] and v.chunking() == [1] * (len(expect_dims) - 2) + [NLAT, NLON]
            if product == "members":
                assert "cell_methods" not in v.ncattrs()
            else:
                assert v.cell_methods == {"mean": "realization: mean",
                                          "spread": "realization: standard_deviation"}[product]


@pytest.mark.parametrize("product", ["mean", "members"])
def test_xarray_decodes_without_warnings(tmp_path, product):
    import xarray as xr
    src = source(product)
    with make(tmp_path, product) as w:
        write_leads(w, src, product, range(len(LEADS)), np.random.default_rng(2))
    path = forecast_path(tmp_path, INIT, product)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with xr.open_dataset(path) as ds:
            ds.load()
        with xr.open_dataset(path, decode_timedelta=True) as dst:
            dst.load()
    assert ds.time.values[0] == INIT
    np.testing.assert_array_equal(ds.lead_time.values, LEADS)
    np.testing.assert_array_equal(dst.lead_time.values, np.array(LEADS, "timedelta64[h]"))
    np.testing.assert_array_equal(ds.valid_time.values[0], INIT + np.array(LEADS, "timedelta64[h]"))
    assert "valid_time" in ds.coords and ds.z500.attrs["units"] == "m2 s-2"
    got = ds.t2m.isel(time=0).values
    want = src[:, :, 1] if product == "members" else src[:, 1]
    np.testing.assert_array_equal(np.moveaxis(got, 0, 1) if product == "members" else got, want)


def test_partial_file_masks_unwritten_and_keeps_partial_name(tmp_path):
    src = source("mean")
    w = make(tmp_path, "mean")
    write_leads(w, src, "mean", [0, 2], np.random.default_rng(3))
    w.write(1, src[1][:, 0:3, :], rows=slice(0, 3))
    assert w.leads_complete == 1 and not w.complete
    w.close()
    path = forecast_path(tmp_path, INIT, "mean")
    assert not path.exists() and partial_path(path).exists()
    got = read_values(partial_path(path), "mean")
    np.testing.assert_array_equal(got[0], src[0])
    np.testing.assert_array_equal(got[1, :, :3], src[1, :, :3])
    assert np.isnan(got[1, :, 3:]).all() and np.isnan(got[3]).all()
    with netCDF4.Dataset(partial_path(path)) as ds:
        assert ds.leads_complete == 1


@pytest.mark.parametrize("product", ["spread", "members"])
def test_resume_equals_uninterrupted(tmp_path, product):
    src = source(product, seed=5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with make(tmp_path / "a", product) as w:
        write_leads(w, src, product, range(len(LEADS)), np.random.default_rng(4))

    w = make(tmp_path / "b", product)
    write_leads(w, src, product, [0, 1], np.random.default_rng(5))
    w.write(2, np.full_like(src[2][..., 0:3, 0:6], -1.0), rows=slice(0, 3), cols=slice(0, 6),
            members=slice(0, M) if product == "members" else None)  # interrupted mid-lead
    w.flush()
    w._ds.close()  # simulate a crash: no close(), the file stays partial
    path = forecast_path(tmp_path / "b", INIT, product)

    with ForecastWriter.open_existing(path) as w2:
        assert w2.leads_complete == 2 and w2.variables == VARS
        with pytest.raises(ValueError, match="already complete"):
            w2.write(1, src[1], members=slice(0, M) if product == "members" else None)
        write_leads(w2, src, product, range(2, len(LEADS)), np.random.default_rng(6))
    assert path.exists() and not partial_path(path).exists()
    np.testing.assert_array_equal(read_values(path, product),
                                  read_values(forecast_path(tmp_path / "a", INIT, product), product))
    with netCDF4.Dataset(path) as ds:
        assert "resumed at lead index 2" in ds.history


def test_resume_at_earlier_lead_and_of_a_finished_file(tmp_path):
    src = source("mean")
    with make(tmp_path, "mean") as w:
        write_leads(w, src, "mean", range(len(LEADS)), np.random.default_rng(0))
    path = forecast_path(tmp_path, INIT, "mean")
    with ForecastWriter.open_existing(path) as w:
        assert w.complete
    with pytest.raises(ValueError, match="complete leads"):
        ForecastWriter.open_existing(path, resume_at=len(LEADS) + 1)
    w = ForecastWriter.open_existing(path, resume_at=3)
    assert not path.exists() and partial_path(path).exists()
    w.write(3, src[3] + 1)
    w.close()
    np.testing.assert_array_equal(read_values(path, "mean")[3], src[3] + 1)


def test_clear_errors(tmp_path):
    w = make(tmp_path, "mean")
    src = source("mean")
    with pytest.raises(ValueError, match="does not fit"):
        w.write(0, src[0][:, :3], rows=slice(0, 4))
    w.write(0, src[0][:, :3], rows=slice(0, 3))
    with pytest.raises(ValueError, match="overlaps"):
        w.write(0, src[0][:, 2:4], rows=slice(2, 4))
    with pytest.raises(IndexError, match="outside"):
        w.write(9, src[0])
    with pytest.raises(ValueError, match="members= only applies"):
        w.write(1, src[1], members=slice(0, 1))
    with pytest.raises(ValueError, match="contiguous"):
        w.write(1, src[1][:, ::2], rows=slice(0, 7, 2))
    w.close()
    with pytest.raises(ValueError, match="product must be one of"):
        make(tmp_path, "median")
    with pytest.raises(ValueError, match="no units"):
        ForecastWriter(tmp_path / "x.nc", **{**META, "units": {}}, lat=LAT, lon=LON, init_time=INIT,
                       lead_hours=LEADS, product="mean")
    with pytest.raises(TypeError, match="cannot store"):
        ForecastWriter(
            tmp_path / "y.nc", **META, lat=LAT, lon=LON, init_time=INIT, lead_hours=LEADS, product="mean",
            attrs={"bad": {"a": 1}})
    with pytest.raises(ValueError, match="strictly increasing"):
        ForecastWriter(tmp_path / "z.nc", **META, lat=LAT, lon=LON, init_time=INIT, lead_hours=[6, 0],
                       product="mean")
    with pytest.raises(ValueError, match="closed"):
        w.write(1, src[1])


def test_forecast_path_naming(tmp_path):
    assert forecast_path(tmp_path, np.datetime64("2018-03-04T18"), "spread").name == "forecast_20180304T18_spread.nc"


def test_the_writer_does_not_keep_written_planes_resident(tmp_path):
    """Whole 721 x 1440 planes of 8 variables at 3 leads (100 MB): HDF5's default chunk cache (64 MB per variable)
    kept every one resident; the writer's cache is smaller than a plane, so its resident set stays flat."""
    from hpc_fcn.memwatch import current_rss, release_free_heap
    names = [f"v{i}" for i in range(8)]
    meta = dict(variables=names, units=dict.fromkeys(names, "1"), standard_names=dict.fromkeys(names, ""),
                long_names=dict.fromkeys(names, "test field"))
    lat, lon = np.linspace(90, -90, 721), np.arange(1440) * 0.25
    plane = np.random.default_rng(0).standard_normal((len(names), 721, 1440)).astype(np.float32)
    path = forecast_path(tmp_path, INIT, "mean")
    with ForecastWriter(path, lat=lat, lon=lon, init_time=INIT, lead_hours=[0, 6, 12], product="mean",
                        complevel=1, **meta) as w:
        w.write(0, plane)
        w.flush()
        release_free_heap()
        before = current_rss()
        for lead in (1, 2):
            w.write(lead, plane + lead)
            w.flush()
        release_free_heap()
        grown = current_rss() - before
    # the default cache would hold 2 leads x 8 planes of 4.15 MB (66 MB); allow 2 planes of compression buffers
    assert grown < 9 << 20, f"the writer's resident set grew {grown / 2**20:.0f} MB over 2 leads"
    with netCDF4.Dataset(path) as ds:
        np.testing.assert_array_equal(ds.variables["v3"][0, 2], plane[3] + 2)
