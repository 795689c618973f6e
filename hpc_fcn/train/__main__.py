"""``python -m hpc_fcn.train CONFIG [key=value ...]``: train under mpirun (any layout of the process grid)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from ..config import load_config
from ..paths import check_paths
from ..runtime import main_guard, set_threads, setup_logging, world
from .config import TrainConfig


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpc_fcn.train",
                                description="Train the AFNO model (data + model parallel under mpirun).")
    p.add_argument("config", help="YAML config, e.g. config/train_builtin.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. phases.0.epochs=2 resume=true")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    cfg = load_config(TrainConfig, args.config, args.overrides)
    check_paths(cfg)  # a missing data folder or checkpoint fails here, on every rank, before any work
    comm = world()
    logger = setup_logging(comm.rank, cfg.log_level)
    set_threads(comm, cfg.parallel.threads)
    out = Path(cfg.output.dir)
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(out / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(fh)
    from .app import build_trainer
    trainer = build_trainer(cfg, comm)
    result = trainer.run()
    logger.info("done: %d optimizer steps; checkpoints in %s", result["iters"], trainer.ckpt_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
