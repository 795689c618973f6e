"""How many members one forward pass carries on this device now: the rule of :mod:`hpc_fcn.model.facts`, fed
with this device's free memory and the shapes of the model it runs.

The rule, the per-member bytes and the balancing over passes (``pass_size``) are the model facts' (the
performance model and the job generator predict with the same functions); this module only reads the
device (free memory) and the model (its shapes and layout).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..model.config import ModelShape
from ..model.facts import auto_pass_limit, budgeted_member_bytes, members_that_fit, memory_budget, pass_size
from ..model.facts import member_bytes as live_member_bytes
from ..parallel.layout import Layout


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device`` now: the GPU's, or MemAvailable of this node for a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        return 8 << 30


def available_bytes(device: torch.device) -> int:
    """Memory the passes may use now (:func:`~hpc_fcn.model.facts.memory_budget`): of the free memory on a GPU,
    of MemAvailable on a CPU (this node)."""
    return memory_budget(free_bytes(device), gpu=device.type == "cuda")


def shape_and_layout(model: nn.Module) -> tuple[ModelShape, Layout]:
    """The shapes of an AFNONet or DistributedAFNONet (its ``config()``) and the h x w x matmul it is split over."""
    grid = getattr(model, "grid", None)
    lay = Layout(1, grid.h.size, grid.w.size, grid.matmul.size) if grid is not None else Layout()
    return ModelShape.of(model.config()), lay


def member_bytes(model: nn.Module, precision: str = "fp32", cuda_graphs: bool = False) -> int:
    """Bytes the pass-size rule reserves for one member of ``model`` on this rank (its live set, with margin)."""
    shape, lay = shape_and_layout(model)
    return budgeted_member_bytes(live_member_bytes(shape, lay, precision), cuda_graphs)


def auto_members_per_pass(model: nn.Module, device: torch.device, precision: str = "fp32",
                          cuda_graphs: bool = False) -> int:
    """``members_per_pass: 0`` on this device now: the most members one pass may carry."""
    shape, lay = shape_and_layout(model)
    return auto_pass_limit(shape, lay, precision, available_bytes(device), device.type == "cuda", cuda_graphs)


__all__ = ["auto_members_per_pass", "available_bytes", "free_bytes", "member_bytes", "members_that_fit", "pass_size",
           "shape_and_layout"]
