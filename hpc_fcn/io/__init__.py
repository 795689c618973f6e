"""Output of the applications: one backend interface (:mod:`.backend`) with netCDF and zarr implementations,
the CF layout they share (:mod:`.cf`), the output folder's lock and space checks (:mod:`.outdir`)."""
from .backend import FORMATS, OutputBackend, OutputSpec, RankWindow, backend_class
from .cf import PRODUCTS, software_versions
from .netcdf import ForecastWriter, forecast_path, partial_path

__all__ = ["FORMATS", "OutputBackend", "OutputSpec", "RankWindow", "backend_class", "PRODUCTS", "software_versions",
           "ForecastWriter", "forecast_path", "partial_path"]
