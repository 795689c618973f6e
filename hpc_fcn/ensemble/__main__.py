"""``mpirun -n N python -m hpc_fcn.ensemble CONFIG [key=value ...]``: run an ensemble forecast."""
from __future__ import annotations

import sys

from ..cli import parse_command, start
from ..runtime import main_guard


def main(argv) -> int:
    from .config import EnsembleConfig
    args = parse_command("python -m hpc_fcn.ensemble", "Run a FourCastNet ensemble forecast over MPI ranks.",
                         "config/ens100.yaml", "ensemble.members=10", argv, schema=EnsembleConfig)
    from mpi4py import MPI
    from .app import EnsembleRun
    comm = MPI.COMM_WORLD
    cfg, _ = start(EnsembleConfig, args, comm)
    import perfmodel  # the layout: auto choice; only the command line depends on the performance model
    EnsembleRun(cfg, comm, suggest=perfmodel.suggest).run()
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
