"""The model as the trainer sees it, whatever the decomposition.

A "shards" object gives the local parameters under their serial names, how many ranks of the model
group hold each one, the complete gradient reduction (model group and data-parallel sum), and the
conversion of any per-parameter tensors (weights, Adam moments) between this rank's shards and full
serial tensors, so checkpoints never depend on the layout.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn

from ..parallel.split import shard_range, split_sizes


class SerialShards:
    """The whole AFNONet on this rank (model group of one); gradients are summed over ``data``."""

    def __init__(self, net: nn.Module, data=None):
        self.module = net
        self.model_config = net.config()
        self.data = data

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.module.named_parameters())

    def copies(self) -> dict[str, int]:
        """Ranks of the model group holding an identical copy of each parameter (shard)."""
        return {name: 1 for name, _ in self.module.named_parameters()}

    def reduce_gradients(self) -> None:
        """Sum gradients over the data-parallel ranks (each rank's loss is its share of the batch mean)."""
        if self.data is not None:
            self.data.all_reduce_grads([p for _, p in self.named_parameters()], tag="grad_sum")

    def gather(self, local: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full tensors from per-parameter shards (here: the tensors themselves, on the CPU)."""
        return {k: v.detach().cpu().clone() for k, v in local.items()}

    def shard(self, full: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's shards of full per-parameter tensors (here: all of them)."""
        return dict(full)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_full_state_dict(self, full: Mapping[str, torch.Tensor]) -> None:
        """Load a full serial state dict (every rank passes the same one)."""
        self.module.load_state_dict(dict(full), strict=True)


class DistributedShards:
    """A :class:`hpc_fcn.parallel.model.DistributedAFNONet` over the grid's h x w x matmul axes.

    Uses the model's ``shard_spec`` (which serial dimension is split over which axis) to move any
    per-parameter tensor between full and sharded form with the grid's collectives.
    """

    def __init__(self, net: nn.Module, grid):
        from ..parallel.model import DistributedAFNONet
        self.grid = grid
        self.model_config = net.config()
        self.module = DistributedAFNONet.from_serial(net, None, grid).to(next(net.parameters()).device)
        m = self.module
        self._serial_shape = {"pos_embed": (1, m.H, m.W, m.embed_dim)}
        self._axis_len = {"h": m.H, "w": m.W}

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.module.named_parameters())

    def copies(self) -> dict[str, int]:
        out = {}
        for name, _ in self.module.named_parameters():
            split = math.prod(self.grid.axis(a).size for _, a in self.module.shard_spec(name))
            out[name] = self.grid.model.size // split
        return out

    def reduce_gradients(self) -> None:
        """Sum over spatial ranks where replicated, then over the data-parallel ranks (sum, not mean)."""
        self.module.reduce_gradients(data_parallel=True, average_data=False)

    def _gather_one(self, key: str, local: torch.Tensor) -> torch.Tensor:
        t = local.detach()
        for dim, axis in reversed(self.module.shard_spec(key)):
            ax = self.grid.axis(axis)
            n = self._axis_len.get(axis, self._full_len(key, dim))
            t = ax.all_gather(t.contiguous(), dim, split_sizes(n, ax.size), tag="gather_state")
        return t.reshape(1, -1, t.shape[-1]) if key in self._serial_shape else t

    def _full_len(self, key: str, dim: int) -> int:
        """Length of serial dimension ``dim`` of ``key`` (from the serial model config)."""
        return self._full_shapes()[key][dim]

    def _full_shapes(self) -> dict[str, tuple[int, ...]]:
        if not hasattr(self, "_shapes"):
            from ..model import AFNONet
            with torch.device("meta"):
                ref = AFNONet(**self.model_config)
            self._shapes = {k: tuple(self._serial_shape.get(k, v.shape)) for k, v in ref.state_dict().items()}
        return self._shapes

    def gather(self, local: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full serial tensors from this rank's shards (collective over the model group; same keys everywhere)."""
        return {k: self._gather_one(k, v).cpu() for k, v in local.items()}

    def shard(self, full: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's shard of each full serial tensor."""
        out = {}
        for key, t in full.items():
            if key in self._serial_shape:
                t = t.reshape(self._serial_shape[key])
            for dim, axis in self.module.shard_spec(key):
                ax = self.grid.axis(axis)
                a, b = shard_range(t.shape[dim], ax.size, ax.rank, f"{key} dimension {dim}")
                t = t.narrow(dim, a, b - a)
            out[key] = t.contiguous()
        return out

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.module.gather_state_dict().items()}

    def load_full_state_dict(self, full: Mapping[str, torch.Tensor]) -> None:
        self.module.load_serial_state_dict(dict(full))


def make_shards(net: nn.Module, topo):
    """Serial shards when the model group is one rank, else the distributed model on the grid."""
    if not topo.model_parallel:
        return SerialShards(net, topo.data)
    return DistributedShards(net, topo.grid)
