"""Distributed training of the AFNO model: ``python -m hpc_fcn.train CONFIG [key=value ...]``."""
