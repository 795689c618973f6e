"""hpc_fcn: FourCastNet forecasts and ensembles spread over MPI ranks."""
__version__ = "0.1.0"
