"""Analytic performance model of the AFNO network: FLOPs, bytes, messages, memory, time per region.

``load_hardware``, ``predict`` and ``suggest`` are the API; ``python -m perfmodel`` the command line
(predict, suggest, calibrate, compare). docs/perfmodel.md gives the equations and their limits.
"""
from hpc_fcn.parallel.layout import Layout, layout_problem

from .hardware import Hardware, Link, load_hardware
from .memory import Memory
from .predict import Prediction, Region, predict, suggest

__all__ = ["Hardware", "Layout", "Link", "Memory", "Prediction", "Region", "layout_problem",
           "load_hardware", "predict", "suggest"]
