#!/usr/bin/env python
"""Convert ERA5 (CDS netCDF or GRIB) into the FourCastNet layout: the command line of hpc_fcn.data.convert.

The same as ``python -m hpc_fcn.data.convert``; kept for the documented commands and batch scripts.

    python tools/era5_to_fcn.py --input /data/cds --output /data/era5 --years 1979-2015 --split train \
        --stats-from train
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    from hpc_fcn.data.convert import *  # noqa: F401,F403 - the tests and users reach the library through here
    from hpc_fcn.data.convert import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hpc_fcn.data.convert import *  # noqa: F401,F403
    from hpc_fcn.data.convert import main

if __name__ == "__main__":
    sys.exit(main())
