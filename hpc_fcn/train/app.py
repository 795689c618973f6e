"""Assemble a training run from a config: grid, data, model shards, trainer (used by the CLI and tests)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..config import save_resolved
from ..data.era5 import open_split
from ..model import AFNONet, load_checkpoint
from ..runtime import UserError
from .config import TrainConfig
from .sharded import make_shards
from .topology import build_topology
from .trainer import Trainer

log = logging.getLogger("hpc_fcn.train")


def pick_device(name: str, comm) -> torch.device:
    """The CPU, or this rank's GPU (local rank modulo the GPUs it sees), as the ensemble app picks it."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no GPU is visible; use device=auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    from ..accel.device import select_device
    from ..runtime import local_rank
    return select_device("cuda", local_rank(comm))


def data_root(cfg: TrainConfig, comm) -> Path:
    """``data.root``, generating the built-in dataset on first use when it is 'builtin'."""
    if cfg.data.root == "builtin":
        from ..data.builtin import ensure_builtin
        return Path(ensure_builtin(comm))
    return Path(cfg.data.root).expanduser()


def build_model(cfg: TrainConfig, nchan: int) -> AFNONet:
    """The serial AFNONet: random weights from ``model.seed`` (the same on every rank) or a checkpoint."""
    torch.manual_seed(cfg.model.seed)
    net = AFNONet(**cfg.model.kwargs(nchan, nchan))
    if cfg.model.checkpoint:
        load_checkpoint(cfg.model.checkpoint, net)
    return net


def build_trainer(cfg: TrainConfig, comm, out_dir: str | Path | None = None) -> Trainer:
    """Everything a run needs, on every rank of ``comm``; resumes when ``cfg.resume`` and a checkpoint exists."""
    device = pick_device(cfg.device, comm)
    root = data_root(cfg, comm)
    train_ds = open_split(cfg.data, "train", root)
    valid_ds = open_split(cfg.data, "valid", root) if cfg.validation.enabled else None
    if (train_ds.nlat, train_ds.nlon) != tuple(cfg.model.img_size):
        raise UserError(f"model.img_size {list(cfg.model.img_size)} does not match the data's model grid "
                        f"{train_ds.nlat} x {train_ds.nlon} ({root})")
    topo = build_topology(comm, cfg.parallel, cfg.model, device=str(device))
    net = build_model(cfg, len(train_ds.channels)).to(device)
    shards = make_shards(net, topo)
    out = Path(out_dir or cfg.output.dir)
    if comm.rank == 0:
        save_resolved(cfg, out)
    comm.Barrier()
    trainer = Trainer(cfg, topo, shards, train_ds, valid_ds, out, device)
    last = trainer.ckpt_dir / "last.ckpt"
    if cfg.resume and last.is_file():
        trainer.resume(last)
    elif cfg.resume:
        log.info("resume=true but %s does not exist: starting a new run", last)
    log.info("training on %d rank(s) (%s), device %s, window rows %s cols %s", comm.size, topo.layout(), device,
             topo.rows, topo.cols)
    return trainer
