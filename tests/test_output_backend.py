"""The output-backend seam: every format implements the one interface, and the config accepts exactly the
registered formats."""
import inspect
import typing

import netCDF4
import numpy as np
import pytest

from hpc_fcn.config import ConfigError, from_dict
from hpc_fcn.ensemble.config import EnsembleConfig, OutputConfig
from hpc_fcn.io import cf
from hpc_fcn.io.backend import FORMATS, OutputBackend, OutputSpec, backend_class


def test_every_registered_format_is_a_complete_backend():
    for fmt in FORMATS:
        cls = backend_class(fmt)
        assert issubclass(cls, OutputBackend) and not inspect.isabstract(cls), fmt
    with pytest.raises(ValueError, match="output format 'grib' is not one of netcdf, zarr"):
        backend_class("grib")


def test_the_config_takes_the_registered_formats_and_nothing_else():
    hint = typing.get_type_hints(OutputConfig)["format"]
    assert typing.get_args(hint) == tuple(FORMATS)
    for fmt in FORMATS:
        assert from_dict(EnsembleConfig, {}, [f"output.format={fmt}"]).output.format == fmt
    with pytest.raises(ConfigError, match="output.format"):
        from_dict(EnsembleConfig, {}, ["output.format=grib"])


def test_lead_bytes_counts_float32_fields_of_each_product():
    spec = OutputSpec(outdir=None, products=("mean", "spread", "members"), variables=["u", "v"], units={},
                      standard_names={}, long_names={}, lat=np.zeros(3), lon=np.zeros(4), lead_hours=[0, 6],
                      n_members=5)
    assert spec.lead_bytes("mean") == 2 * 3 * 4 * 4
    assert spec.lead_bytes("members") == 5 * spec.lead_bytes("spread")


def test_the_shared_fill_value_is_netcdfs():
    assert cf.FILL_VALUE == np.float32(netCDF4.default_fillvals["f4"])
