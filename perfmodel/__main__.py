"""Command line of the performance model: python -m perfmodel {predict,suggest,calibrate,compare} ...

The top level, like hpc_fcn/ensemble/__main__.py: the one module of the package that knows an app. It hands
predict and suggest the reader of an ensemble config (:func:`hpc_fcn.jobs.load_ensemble_case`), so the model
itself depends only on hpc_fcn.model and hpc_fcn.parallel.layout.
"""
import sys

from hpc_fcn.jobs import load_ensemble_case

from .cli import main

sys.exit(main(load_case=load_ensemble_case))
