"""Zarr output on 4 ranks: every rank writes its own window, and the store equals the netCDF files value for value."""
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble_setup import tiny_config, tiny_dataset  # noqa: E402

from hpc_fcn.ensemble.app import EnsembleRun  # noqa: E402
from hpc_fcn.parallel.testing import shared_tempdir  # noqa: E402

FOUR = pytest.mark.skipif(MPI.COMM_WORLD.size != 4, reason="layouts are laid out for 4 ranks")


@pytest.fixture(scope="module")
def shared_tmp():
    return shared_tempdir("hpc_fcn_zarr_", lambda p: tiny_dataset(p / "data"))


@FOUR
@pytest.mark.parametrize("layout", [["parallel.ensemble=4"], ["parallel.h=2", "parallel.ensemble=2"],
                                    ["parallel.w=2", "parallel.matmul=2", "parallel.ensemble=1"]],
                         ids=["ens4", "h2xens2", "w2xmatmul2"])
def test_zarr_equals_netcdf(shared_tmp, layout):
    _compare(shared_tmp, layout)


@pytest.mark.odd_ranks
@pytest.mark.skipif(MPI.COMM_WORLD.size != 3, reason="an uneven split of the rows over 3 ranks")
def test_zarr_on_uneven_row_blocks_equals_netcdf(shared_tmp):
    """8 token rows over h=3: blocks of 12, 12 and 8 pixel rows; the chunks still have one writer each."""
    _compare(shared_tmp, ["parallel.h=3", "parallel.ensemble=1"])


def _compare(shared_tmp, layout):
    import xarray as xr
    world = MPI.COMM_WORLD
    name = "_".join(o.split(".")[1] for o in layout)
    common = ["initial_conditions.count=1", "ensemble.members=5"] + layout
    for fmt in ("netcdf", "zarr"):
        EnsembleRun(tiny_config(shared_tmp / "data", shared_tmp / f"{name}_{fmt}", common + [f"output.format={fmt}"]),
                    world).run()
    world.Barrier()
    if world.rank != 0:
        return
    for product in ("mean", "spread", "members"):
        (nc,) = sorted((shared_tmp / f"{name}_netcdf").glob(f"forecast_*_{product}.nc"))
        (zs,) = sorted((shared_tmp / f"{name}_zarr").glob(f"forecast_*_{product}.zarr"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            z = xr.open_zarr(zs, consolidated=True, decode_timedelta=True).load()
        n = xr.open_dataset(nc, decode_timedelta=True).load()
        assert z.attrs["leads_complete"] == n.sizes["lead_time"] == 5
        for v in ("u", "v", "z"):
            assert z[v].dims == n[v].dims
            np.testing.assert_array_equal(z[v].values, n[v].values, err_msg=f"{name} {product} {v}")
            for key in ("units", "standard_name", "long_name", "cell_methods"):
                assert z[v].attrs.get(key) == n[v].attrs.get(key), (product, v, key)
        for c in ("time", "lead_time", "valid_time", "lat", "lon"):
            np.testing.assert_array_equal(z[c].values, n[c].values)
        assert np.isfinite(z["u"].values).all()


@FOUR
def test_a_store_of_another_run_is_refused_on_every_rank(shared_tmp):
    from hpc_fcn.runtime import UserError
    world = MPI.COMM_WORLD
    common = ["initial_conditions.count=1", "forecast.lead_time=1d", "output.format=zarr", "output.members=false",
              "parallel.ensemble=4"]
    EnsembleRun(tiny_config(shared_tmp / "data", shared_tmp / "other", common + ["ensemble.members=5"]), world).run()
    with pytest.raises(UserError, match=r"holds another run's output \(members 5 \(this run: 4\)\); choose another"):
        EnsembleRun(tiny_config(shared_tmp / "data", shared_tmp / "other", common + ["ensemble.members=4"]),
                    world).run()
