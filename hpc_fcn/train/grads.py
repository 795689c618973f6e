"""Gradient checks and clipping: the global norm over every shard, non-finite detection, scaling."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def global_grad_norm(named: Sequence[tuple[str, torch.nn.Parameter]], copies: dict[str, int], comm) -> float:
    """L2 norm of the whole model's gradient: each shard's square sum over its number of copies in
    ``comm`` (a Communicator; a parameter replicated on k ranks counts once), summed over ``comm``. In fp64."""
    squares = [p.grad.detach().double().pow(2).sum() / copies[name] for name, p in named if p.grad is not None]
    local = float(torch.stack(squares).sum()) if squares else 0.0  # one device-to-host copy
    total = comm.all_reduce(local, tag="grad_norm")
    return math.sqrt(total) if total >= 0 and math.isfinite(total) else float("inf")


def clip_gradients(params: Sequence[torch.nn.Parameter], norm: float, max_norm: float) -> float:
    """Scale gradients so their global norm is at most ``max_norm`` (0 = off); returns the factor."""
    if max_norm <= 0 or not math.isfinite(norm) or norm <= max_norm:
        return 1.0
    factor = max_norm / (norm + 1e-6)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)
    return factor


def any_nonfinite(params: Sequence[torch.nn.Parameter], comm) -> bool:
    """True on every rank of ``comm`` when any rank has an Inf/NaN gradient (keeps fp16 skips in step)."""
    bad = any(p.grad is not None and not bool(torch.isfinite(p.grad).all()) for p in params)
    return bool(comm.all_reduce(int(bad), tag="grad_finite", op="max"))


def poison(params: Sequence[torch.nn.Parameter]) -> None:
    """Set every gradient to Inf so that a GradScaler skips this step on this rank too."""
    for p in params:
        if p.grad is not None:
            p.grad.fill_(float("inf"))
