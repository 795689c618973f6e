"""Assemble a training run from a config: grid, data, model shards, trainer (used by the CLI and tests)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import save_resolved
from ..data.era5 import open_split
from ..model import AFNONet
from ..runtime import UserError
from ..setup import data_root, rank_device, serial_model
from .config import TrainConfig
from .sharded import make_shards
from .topology import build_topology
from .trainer import Trainer

log = logging.getLogger("hpc_fcn.train")


def build_model(cfg: TrainConfig, nchan: int, grid_shape: tuple[int, int]) -> AFNONet:
    """The serial AFNONet (shared set-up): random weights from ``model.seed`` (the same on every rank) or a checkpoint."""
    net, _ = serial_model(cfg.model, nchan, grid_shape, add_noise=True)
    return net.train()


def build_trainer(cfg: TrainConfig, comm, out_dir: str | Path | None = None) -> Trainer:
    """Everything a run needs, on every rank of ``comm``; resumes when ``cfg.resume`` and a checkpoint exists."""
    device = rank_device(cfg.device, comm, key="device")
    root = data_root(cfg.data, comm)
    train_ds = open_split(cfg.data, "train", root)
    valid_ds = open_split(cfg.data, cfg.validation.split, root) if cfg.validation.enabled else None
    if (train_ds.nlat, train_ds.nlon) != tuple(cfg.model.img_size):
        raise UserError(f"model.img_size {list(cfg.model.img_size)} does not match the data's model grid "
                        f"{train_ds.nlat} x {train_ds.nlon} ({root})")
    topo = build_topology(comm, cfg.parallel, cfg.model, device=str(device))
    net = build_model(cfg, len(train_ds.channels), (train_ds.nlat, train_ds.nlon)).to(device)
    shards = make_shards(net, topo)
    out = Path(out_dir or cfg.output.dir)
    if comm.rank == 0:
        save_resolved(cfg, out)
    topo.world.barrier(tag="start")
    trainer = Trainer(cfg, topo, shards, train_ds, valid_ds, out, device)
    last = trainer.ckpt_dir / "last.ckpt"
    if cfg.resume and last.is_file():
        trainer.resume(last)
    elif cfg.resume:
        log.info("resume=true but %s does not exist: starting a new run", last)
    log.info("training on %d rank(s) (%s), device %s, window rows %s cols %s", comm.size, topo.layout(), device,
             topo.rows, topo.cols)
    return trainer
