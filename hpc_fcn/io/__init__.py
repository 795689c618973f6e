"""Output files of the applications: CF netCDF4 forecast files and the window gathering that feeds them."""
from .netcdf import (PRODUCTS, ForecastWriter, forecast_path, gather_window_to_root, partial_path,
                     software_versions)

__all__ = ["PRODUCTS", "ForecastWriter", "forecast_path", "gather_window_to_root", "partial_path",
           "software_versions"]
