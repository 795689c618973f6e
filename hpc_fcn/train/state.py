"""Training checkpoints that do not depend on the decomposition.

The file is the published layout (``model_state`` with ``module.`` keys, ``optimizer_state_dict``,
``epoch``, ``iters``) written by :func:`hpc_fcn.model.save_checkpoint`. The optimizer state is keyed by
parameter name and holds full tensors (Adam moments gathered from the shards), and ``train_state``
holds the data position, schedule, loss history, RNG and loss-scaler state, so any layout resumes
the same run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..model import extract_state_dict, save_checkpoint

OPTIM_FORMAT = "hpc_fcn.adamw-by-name/1"
MOMENTS = ("exp_avg", "exp_avg_sq")


def gather_optimizer(optimizer: torch.optim.Optimizer, shards) -> dict:
    """The optimizer state as full tensors keyed by parameter name (collective over the model group)."""
    named = shards.named_parameters()
    state = {}
    for key in MOMENTS:
        local = {n: optimizer.state[p][key] for n, p in named if key in optimizer.state.get(p, {})}
        for name, full in shards.gather(local).items():
            state.setdefault(name, {})[key] = full
    for name, p in named:
        if name in state:
            state[name]["step"] = torch.as_tensor(float(optimizer.state[p]["step"]), dtype=torch.float32)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return {"format": OPTIM_FORMAT, "state": state, "param_groups": groups}


def load_optimizer(optimizer: torch.optim.Optimizer, saved: Mapping, shards) -> None:
    """Shard a saved by-name optimizer state onto this rank's parameters."""
    if saved.get("format") != OPTIM_FORMAT:
        raise ValueError(f"optimizer state format {saved.get('format')!r} is not {OPTIM_FORMAT!r}: "
                         f"cannot resume from this checkpoint (start from its weights with model.checkpoint)")
    state = saved["state"]
    for key in MOMENTS:
        local = shards.shard({n: s[key] for n, s in state.items() if key in s})
        for name, p in shards.named_parameters():
            if name in local:
                optimizer.state[p][key] = local[name].to(device=p.device, dtype=p.dtype).clone()
    for name, p in shards.named_parameters():
        if name in state:
            optimizer.state[p]["step"] = state[name]["step"].clone().float()
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in saved_group.items() if k in group and k != "params"})


def write(path: Path, model_state: Mapping[str, torch.Tensor], model_config: Mapping, *, optimizer: Mapping | None,
          train_state: Mapping[str, Any], epoch: int, iters: int, config: Mapping | None = None) -> None:
    """Write one checkpoint atomically (call on one rank only)."""
    extra = {"train_state": dict(train_state)}
    if config is not None:
        extra["config"] = dict(config)
    save_checkpoint(path, model_state, optimizer_state=optimizer, epoch=epoch, iters=iters,
                    model_config=model_config, extra=extra)


def read(path: Path) -> dict:
    """A training checkpoint (weights_only: plain tensors and containers)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "train_state" not in ckpt:
        raise ValueError(f"{path} is a weights-only checkpoint: it cannot be resumed")
    ckpt["model_state_plain"] = extract_state_dict(ckpt)
    return ckpt


def write_weights(path: Path, model_state: Mapping[str, torch.Tensor], model_config: Mapping,
                  *, epoch: int, iters: int, extra: Mapping[str, Any] | None = None) -> None:
    """The published layout with the weights only (an empty optimizer state): the committed asset."""
    save_checkpoint(path, model_state, optimizer_state={}, epoch=epoch, iters=iters,
                    model_config=model_config, extra=extra)
