"""Reading and writing checkpoints in the published FourCastNet layout (and plain state dicts)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from .afnonet import AFNONet, PrecipNet


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def _read(path_or_dict: str | os.PathLike | Mapping) -> Mapping:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    path = Path(path_or_dict).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: set model.checkpoint to a .ckpt/.pt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - rewrap every unpickling failure in one message
        from ..runtime import first_line
        raise CheckpointError(f"checkpoint {path} could not be read as tensors ({type(exc).__name__}: "
                              f"{first_line(exc, 200)}); "
                              f"objects other than tensors are never unpickled") from exc


def extract_state_dict(ckpt: Mapping) -> dict[str, torch.Tensor]:
    """The model weights of a published checkpoint, one of ours, or a plain state dict, without ``module.``."""
    for key in ("model_state", "state_dict", "model"):
        if key in ckpt and isinstance(ckpt[key], Mapping):
            ckpt = ckpt[key]
            break
    state = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError("checkpoint holds no tensors: expected 'model_state' or a state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def infer_model_config(state: Mapping[str, torch.Tensor], hint: Mapping | None = None) -> dict:
    """Constructor keywords of the AFNONet that produced ``state`` (``hint`` supplies what shapes cannot)."""
    hint = dict(hint or {})
    precip = any(k.startswith("backbone.") for k in state)
    pre = "backbone." if precip else ""
    try:
        pw = state[pre + "patch_embed.proj.weight"]
        pos = state[pre + "pos_embed"]
        head = state[pre + "head.weight"]
        w1 = state[pre + "blocks.0.filter.w1"]
        fc1 = state[pre + "blocks.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise CheckpointError(f"not an AFNONet checkpoint: key {exc.args[0]!r} is missing") from exc
    embed_dim, in_chans, p1, p2 = pw.shape
    depth = 1 + max(int(k[len(pre):].split(".")[1]) for k in state if k.startswith(pre + "blocks."))
    cfg = dict(patch_size=[p1, p2], in_chans=in_chans, out_chans=head.shape[0] // (p1 * p2),
               embed_dim=embed_dim, depth=depth, mlp_ratio=fc1.shape[0] / embed_dim,
               num_blocks=w1.shape[1], sparsity_threshold=0.01, hard_thresholding_fraction=1.0)
    if pre + "noise_proj.weight" in state:  # a stochastic model (hpc_fcn.model.afnonet.add_noise)
        cfg["noise_dim"] = int(state[pre + "noise_proj.weight"].shape[1])
        extra = sum(1 for k in state if k.startswith(pre + "block_noise_proj.") and k.endswith(".weight"))
        if extra:
            cfg["noise_blocks"] = 1 + extra
    if "img_size" not in hint:
        n = pos.shape[1]
        h = math.isqrt(n // 2)
        if 2 * h * h != n:
            raise CheckpointError(f"cannot infer img_size from {n} tokens: pass a model built with the right img_size")
        hint["img_size"] = [h * p1, 2 * h * p2]
    cfg.update({k: v for k, v in hint.items() if k != "precip"})
    cfg["precip"] = precip
    return cfg


def build_model(cfg: Mapping) -> nn.Module:
    cfg = dict(cfg)
    precip = cfg.pop("precip", False)
    return PrecipNet(**cfg) if precip else AFNONet(**cfg)


def check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise one error listing missing keys, unexpected keys and shape differences."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape differences", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label}: {', '.join(items[:8])}{more}")
        raise CheckpointError("checkpoint does not fit the model; " + "; ".join(parts))


def _config_of(ckpt: Mapping, state: Mapping[str, torch.Tensor]) -> dict:
    """The constructor keywords of the model in ``ckpt`` (its stored ``model_config`` as the hint)."""
    hint = ckpt.get("model_config") if isinstance(ckpt.get("model_config"), Mapping) else None
    return infer_model_config(state, hint)


def checkpoint_config(path_or_dict: str | os.PathLike | Mapping) -> dict:
    """The constructor keywords of the model a checkpoint holds, without building it."""
    ckpt = _read(path_or_dict)
    return _config_of(ckpt, extract_state_dict(ckpt))


def load_checkpoint(path_or_dict: str | os.PathLike | Mapping, model: nn.Module | None = None) -> nn.Module:
    """Load published/own/plain checkpoints into ``model`` (built from the checkpoint when None)."""
    ckpt = _read(path_or_dict)
    state = extract_state_dict(ckpt)
    if model is None:
        model = build_model(_config_of(ckpt, state))
    check_compatible(model, state)
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module | Mapping[str, torch.Tensor], *,
                    optimizer_state: Mapping | None = None, epoch: int = 0, iters: int = 0,
                    model_config: Mapping | None = None, extra: Mapping[str, Any] | None = None) -> None:
    """Write the published layout (``module.``-prefixed ``model_state``) plus our ``model_config``.

    Written to a temporary file and renamed, so an interrupted save never leaves a torn checkpoint.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    if model_config is None and hasattr(model, "config"):
        model_config = model.config()
    ckpt = {"iters": int(iters), "epoch": int(epoch),
            "model_state": {"module." + k: v.detach().cpu() for k, v in state.items()},
            "optimizer_state_dict": dict(optimizer_state or {})}
    if model_config is not None:
        ckpt["model_config"] = dict(model_config)
    if extra:
        ckpt.update(extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
