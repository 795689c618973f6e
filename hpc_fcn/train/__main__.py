"""``python -m hpc_fcn.train CONFIG [key=value ...]``: train under mpirun (any layout of the process grid)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from ..cli import parse_command, start
from ..runtime import main_guard, world
from .config import TrainConfig


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    return parse_command("python -m hpc_fcn.train", "Train the AFNO model (data + model parallel under mpirun).",
                         "config/train_builtin.yaml", "phases.pretrain.epochs=2 resume=true", argv,
                         schema=TrainConfig)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    comm = world()
    cfg, logger = start(TrainConfig, args, comm)  # a missing data folder or checkpoint fails here, before any work
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
