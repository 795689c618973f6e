"""Command line of the performance model: python -m perfmodel {predict,suggest,calibrate,compare} ..."""
import sys

from .cli import main

sys.exit(main())
