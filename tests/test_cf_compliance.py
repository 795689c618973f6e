"""A small run's outputs pass the CF-1.10 checker (compliance-checker, offline): no errors, and no warnings but
the dimension-order ones that Earth2Studio's (time, lead_time, lat, lon) layout forces (docs/output_format.md)."""
import re

import numpy as np
import pytest

from ensemble_setup import tiny_config
from helpers_layout import write_layout

cc_suite = pytest.importorskip("compliance_checker.suite", reason="compliance-checker is a test dependency: make setup")

from hpc_fcn.data.synth import CHANNEL_ATTRS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The ioos_sos checker is deprecated:DeprecationWarning")
CHANNELS = ["u", "v", "z"]
# netCDF: every product, with a lagged ensemble's lag coordinate; zarr (converted): the mean and the members (the
# spread's layout is the mean's)
PRODUCTS = {"netcdf": ("mean", "spread", "members", "probability", "quantile"), "zarr": ("mean", "members")}
# The one warning the layout forces (CF 2.4 recommends T, Z, Y, X with other dimensions to their left; the
# lead_time dimension sits between time and lat), for the data variables (after a leading realization, threshold
# or quantile dimension) and for valid_time(time, lead_time).
FORCED = re.compile(r"^(\w+)'s spatio-temporal dimensions are not in the recommended order T, Z, Y, X and/or further "
                    r"dimensions are not located left of T, Z, Y, X\. The dimensions \(and their guessed types\) are "
                    r"(\w+ \(U\), )?time \(T\), lead_time \(U\)(, lat \(Y\), lon \(X\))? ")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, offline):
    """{format: output dir} of one small run (3 members with the members product) in each format, on data with
    the built-in world's CF metadata; the netCDF run with every derived product and two lagged initial times."""
    from mpi4py import MPI

    from hpc_fcn.ensemble.app import EnsembleRun
    tmp = tmp_path_factory.mktemp("cf")
    meta = {key: {n: CHANNEL_ATTRS[n][i] for n in CHANNELS}
            for i, key in enumerate(("units", "standard_names", "long_names"))}
    write_layout(tmp / "data", splits={"train": [2000], "test": [2001], "out_of_sample": [2002]}, steps=12,
                 channels=CHANNELS, rows=33, cols=64, metadata=meta)
    out = {}
    extra = {"netcdf": ["products.quantiles=[0.1,0.9]", "products.probabilities={u: {above: [0.0]}}",
                        "ensemble.lagged=2", "initial_conditions.split=train",  # train/: the same folder in any vocabulary
                        "initial_conditions.start=2000-01-02T00"], "zarr": []}
    for fmt in ("netcdf", "zarr"):
        cfg = tiny_config(tmp / "data", tmp / fmt, ["ensemble.members=3", "initial_conditions.count=1",
                                                    "forecast.lead_time=1d", f"output.format={fmt}",
                                                    "output.institution=Test Centre", *extra[fmt]])
        EnsembleRun(cfg, MPI.COMM_SELF).run()
        out[fmt] = tmp / fmt
    return out


@pytest.fixture(scope="module")
def offline():
    """Any network access by the checker fails the test (it must use its packaged standard-name table)."""
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError(f"the CF check tried to reach the network: {args} {kwargs}")
    mp = pytest.MonkeyPatch()
    mp.setattr(requests.Session, "request", refuse)
    yield
    mp.undo()


def as_netcdf(store, dest):
    """A zarr store as a netCDF file, variable and global attributes unchanged (the checker reads netCDF only):
    the fill value the netCDF writer sets, and none on coordinates (xarray would give them NaN)."""
    import xarray as xr
    with xr.open_zarr(store, consolidated=True, decode_cf=False) as ds:
        ds.to_netcdf(dest, encoding={n: {"_FillValue": v.attrs.get("missing_value")} for n, v in ds.variables.items()})
    return dest


def cf_failures(path) -> dict[int, list[str]]:
    """compliance-checker cf:1.10 on ``path``: the messages of failed checks by weight (3 errors, 2 warnings,
    1 information), as its report counts them."""
    cs = cc_suite.CheckSuite()
    cs.load_all_available_checkers()
    ds = cs.load_dataset(str(path))
    try:
        results, exceptions = cs.run_all(ds, ["cf:1.10"], skip_checks=[])["cf:1.10"]
    finally:
        ds.close()
    assert not exceptions, exceptions
    out = {3: [], 2: [], 1: []}
    for r in cs.build_structure("cf:1.10", results, str(path), 1)["all_priorities"]:
        if r.value[0] < r.value[1]:
            out[r.weight] += [f"{r.name}: {m}" for m in r.msgs] or [r.name]
    return out


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_outputs_pass_cf_1_10_but_for_the_forced_dimension_order(runs, fmt, tmp_path):
    for product in PRODUCTS[fmt]:
        path = next(runs[fmt].glob(f"forecast_*_{product}.{'nc' if fmt == 'netcdf' else 'zarr'}"))
        if fmt == "zarr":
            path = as_netcdf(path, tmp_path / f"{product}.nc")
        fails = cf_failures(path)
        assert fails[3] == [], f"{product} ({fmt}): errors {fails[3]}"
        assert fails[1] == [], f"{product} ({fmt}): {fails[1]}"
        for w in fails[2]:
            section, _, msg = w.partition(": ")
            assert section == "§2.4 Dimensions" and FORCED.match(msg), f"{product} ({fmt}): undocumented warning {w}"


def test_the_attributes_a_newcomer_reads_say_what_they_mean(runs):
    import netCDF4
    with netCDF4.Dataset(next(runs["netcdf"].glob("forecast_*_mean.nc"))) as ds:
        g = ds.__dict__
        assert g["institution"] == "Test Centre"
        assert g["model_checkpoint"] == "none: random weights (model.seed=3)"
        assert g["layout"] == "ensemble=1 h=1 w=1 matmul=1"
        r = ds["realization"]
        assert r.dimensions == () and r.standard_name == "realization" and r.units == "1"
        assert ds["u"].cell_methods == "realization: mean" and ds["u"].coordinates.split() == ["valid_time",
                                                                                                  "realization"]
    with netCDF4.Dataset(next(runs["netcdf"].glob("forecast_*_members.nc"))) as ds:
        assert ds["realization"].units == "1" and "realization" not in ds["u"].coordinates.split()
        np.testing.assert_array_equal(ds["realization"][:], np.arange(6))  # 3 members of 2 lagged initial times
