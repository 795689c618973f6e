"""How each parameter of a distributed model relates to its serial tensor, stated on the parameter.

Every layer of :mod:`hpc_fcn.parallel.layers` attaches a :class:`ShardSpec` to each parameter it
creates, as Megatron's tensor attributes do; the spec is kept on the owning module (``shard_specs``,
by parameter name) because attributes on a Parameter are lost when a model is deep-copied. The generic functions here read
the specs, so a new layer needs no edit anywhere else: :func:`shard` cuts a serial tensor (weights,
optimizer moments) into this rank's piece, :func:`gather` rebuilds the serial tensor (checkpoints),
:func:`copies` counts the ranks holding the same piece (gradient norm), and :func:`reduce_gradients`
completes the gradients after backward.

Gradient rule: a parameter replicated over a spatial axis (h, w) sees only this rank's tokens, so its
gradient is a partial sum there and is summed over that axis. Over ``matmul`` a replicated parameter
sees replicated inputs (its gradient is already whole), and a split one owns its piece: no sum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from .split import shard_range, split_sizes

SPATIAL = ("h", "w")


@dataclass(frozen=True)
class ShardSpec:
    """``shape``: the full tensor in the layout the shards cut; ``splits``: (dimension, grid axis) pairs
    (none = replicated everywhere); ``serial_shape``: the serial state dict's shape when it differs."""

    shape: tuple[int, ...]
    splits: tuple[tuple[int, str], ...] = ()
    serial_shape: tuple[int, ...] | None = None

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(a for _, a in self.splits)

    def grad_sum_axes(self) -> tuple[str, ...]:
        """Spatial axes over which this parameter's gradient is a partial sum (see the module doc)."""
        return tuple(a for a in SPATIAL if a not in self.axes)


def replicated(shape: Sequence[int]) -> ShardSpec:
    return ShardSpec(tuple(shape))


def split(shape: Sequence[int], *splits: tuple[int, str], serial_shape: Sequence[int] | None = None) -> ShardSpec:
    return ShardSpec(tuple(shape), tuple(splits), tuple(serial_shape) if serial_shape is not None else None)


def attach(module: nn.Module, name: str, spec: ShardSpec) -> None:
    """Record ``spec`` for the parameter ``name`` (dotted, relative to ``module``)."""
    module.__dict__.setdefault("shard_specs", {})[name] = spec


def specs(module: nn.Module) -> dict[str, ShardSpec]:
    """Every parameter's spec under its state-dict name; KeyError names a parameter without one."""
    found = {}
    for prefix, mod in module.named_modules():
        for name, spec in mod.__dict__.get("shard_specs", {}).items():
            found[f"{prefix}.{name}" if prefix else name] = spec
    out = {}
    for k, _ in module.named_parameters():
        if k not in found:
            raise KeyError(f"{k} has no ShardSpec: the layer that creates it must attach one "
                           f"(hpc_fcn.parallel.sharding.attach)")
        out[k] = found[k]
    return out


def shard(full: torch.Tensor, spec: ShardSpec, grid, name: str = "tensor") -> torch.Tensor:
    """This rank's piece of the serial tensor ``full`` (no communication)."""
    t = full.reshape(spec.shape)
    for dim, axis in spec.splits:
        ax = grid.axis(axis)
        a, b = shard_range(t.shape[dim], ax.size, ax.rank, f"{name} dimension {dim}")
        t = t.narrow(dim, a, b - a)
    return t.contiguous()


def gather(local: torch.Tensor, spec: ShardSpec, grid, tag: str = "gather_state") -> torch.Tensor:
    """The serial tensor from every rank's piece (collective over the split axes)."""
    t = local.detach()
    for dim, axis in reversed(spec.splits):
        ax = grid.axis(axis)
        t = ax.all_gather(t.contiguous(), dim, split_sizes(spec.shape[dim], ax.size), tag=tag)
    return t.reshape(spec.serial_shape) if spec.serial_shape is not None else t


def copies(spec: ShardSpec, grid) -> int:
    """Ranks of the model group (h x w x matmul) that hold the same piece."""
    return grid.model.size // math.prod(grid.axis(a).size for a in spec.axes)


def reduce_gradients(module: nn.Module, grid, data=None, data_scale: float = 1.0) -> None:
    """Complete the gradients of ``module`` after backward: sum each over the spatial axes where it is a
    partial sum (one bucket per axis set), then over ``data`` (data-parallel ranks) times ``data_scale``."""
    module_specs = specs(module)
    params = [(k, p) for k, p in module.named_parameters() if p.requires_grad]
    for _, p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups: dict[tuple[str, ...], list[nn.Parameter]] = {}
    for k, p in params:
        groups.setdefault(module_specs[k].grad_sum_axes(), []).append(p)
    comm_of = {("h", "w"): grid.spatial, ("h",): grid.h, ("w",): grid.w}
    for axes, ps in groups.items():
        if axes:
            comm_of[axes].all_reduce_grads(ps)
    if data is not None:
        data.all_reduce_grads([p for _, p in params], data_scale)
