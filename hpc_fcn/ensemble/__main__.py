"""``mpirun -n N python -m hpc_fcn.ensemble CONFIG [key=value ...]``: run an ensemble forecast."""
from __future__ import annotations

import argparse
import sys

from ..runtime import main_guard


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_fcn.ensemble",
                                     description="Run a FourCastNet ensemble forecast over MPI ranks.")
    parser.add_argument("config", help="YAML config, e.g. config/ens100.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. ensemble.members=10")
    args = parser.parse_args(argv)
    from mpi4py import MPI
    from ..config import load_config
    from ..runtime import set_threads, setup_logging
    from .app import EnsembleRun
    from .config import EnsembleConfig
    comm = MPI.COMM_WORLD
    from ..paths import check_paths
    cfg = load_config(EnsembleConfig, args.config, args.overrides)
    check_paths(cfg)
    setup_logging(comm.rank, cfg.log_level)
    set_threads(comm, cfg.parallel.threads)
    import perfmodel  # the layout: auto choice; only the command line depends on the performance model
    EnsembleRun(cfg, comm, suggest=perfmodel.suggest).run()
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
