"""The zarr store: CF metadata that xarray decodes, region writes on layout-aligned chunks, refused mismatches."""
import warnings

import numpy as np
import pytest

from hpc_fcn.io.background import BackgroundWriter
from hpc_fcn.io.zarr import ZarrForecastStore, aligned_chunk, describe_store, mismatch, store_path

INIT = np.datetime64("2002-01-03T00", "h")


def _create(path, product="members", members=3, chunk=(4, 8)):
    ZarrForecastStore.create(path, variables=["u", "z"], units={"u": "m s-1", "z": "m2 s-2"},
                             standard_names={"u": "eastward_wind", "z": None},
                             long_names={"u": "eastward wind", "z": "geopotential"},
                             lat=np.linspace(90, -90, 8), lon=np.arange(16) * 22.5, init_time=INIT,
                             lead_hours=[0, 6, 12], product=product, n_members=members,
                             chunk_rows=chunk[0], chunk_cols=chunk[1], attrs={"ensemble_seed": 3})


@pytest.mark.parametrize("n, starts, expect", [(32, [0, 16], 16), (32, [0, 12, 24], 12), (32, [0, 16, 24], 8),
                                                (32, [0], 32), (720, [0, 184, 368, 544], 8)])
def test_aligned_chunk_puts_a_boundary_at_every_block_start(n, starts, expect):
    c = aligned_chunk(n, starts)
    assert c == expect
    assert all(s % c == 0 for s in starts)


def test_region_writes_decode_with_xarray_and_count_complete_leads(tmp_path):
    import xarray as xr
    path = store_path(tmp_path, INIT, "members")
    assert path.name == "forecast_20020103T00_members.zarr"
    _create(path)
    stores = [ZarrForecastStore.open(path) for _ in range(4)]  # four "ranks", one window each
    rng = np.random.default_rng(0)
    full = rng.standard_normal((3, 2, 8, 16)).astype(np.float32)
    for i, (rows, cols) in enumerate([(slice(0, 4), slice(0, 8)), (slice(0, 4), slice(8, 16)),
                                      (slice(4, 8), slice(0, 8)), (slice(4, 8), slice(8, 16))]):
        assert stores[i].check_aligned(rows, cols) is None
        stores[i].write(1, full[:, :, rows, cols], rows=rows, cols=cols, members=slice(0, 3))
    stores[0].set_leads_complete(2)
    ZarrForecastStore.consolidate(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(path, consolidated=True, decode_timedelta=True).load()
    np.testing.assert_array_equal(ds["u"].values[:, 0, 1], full[:, 0])
    np.testing.assert_array_equal(ds["z"].values[:, 0, 1], full[:, 1])
    assert np.isnan(ds["u"].values[:, 0, 0]).all()  # unwritten leads are missing values
    assert ds.attrs["leads_complete"] == 2 and ds.attrs["Conventions"] == "CF-1.10"
    assert ds["u"].attrs["units"] == "m s-1" and ds["u"].attrs["standard_name"] == "eastward_wind"
    assert str(ds["time"].values[0]).startswith("2002-01-03T00")
    assert ds["lead_time"].values[2] == np.timedelta64(12, "h")
    assert ds["lat"].attrs["units"] == "degrees_north"
    assert stores[0].check_aligned(slice(2, 6), slice(0, 16)) is not None  # straddles a chunk


def test_a_store_of_another_run_is_named_by_the_mismatch(tmp_path):
    path = store_path(tmp_path, INIT, "members")
    _create(path, members=3)
    have = describe_store(path)
    want = dict(have, members=4)
    assert mismatch(have, have) is None
    assert mismatch(have, want) == "members 3 (this run: 4)"
    assert describe_store(tmp_path / "none.zarr") is None


def test_background_writer_runs_jobs_in_order_and_raises_their_error():
    out = []
    w = BackgroundWriter(depth=2, what="the zarr output")
    for i in range(5):
        w.submit([lambda i=i: out.append(i)])
    w.wait()
    assert out == [0, 1, 2, 3, 4]

    def full():
        raise OSError(28, "No space left on device")
    w.submit([full])
    with pytest.raises(OSError, match="writing the zarr output failed: No space left on device"):
        w.wait()
    w.close()
