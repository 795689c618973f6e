"""The model as the trainer sees it, whatever the decomposition.

A "shards" object gives the local parameters under their serial names, how many ranks of the model
group hold each one, the complete gradient reduction (model group and data-parallel sum), and the
conversion of any per-parameter tensors (weights, Adam moments) between this rank's shards and full
serial tensors, so checkpoints never depend on the layout.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ..parallel import sharding


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
            self.data.all_reduce_grads([p for _, p in self.named_parameters() if p.requires_grad], tag="grad_sum")

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

    Reads each parameter's ShardSpec (which serial dimension is split over which axis) to move any
    per-parameter tensor between full and sharded form with the grid's collectives.
    """

    def __init__(self, net: nn.Module, grid):
        from ..parallel.model import DistributedAFNONet
        self.grid = grid
        self.model_config = net.config()
        self.module = DistributedAFNONet.from_serial(net, None, grid).to(next(net.parameters()).device)
        self.specs = sharding.specs(self.module)

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.module.named_parameters())

    def copies(self) -> dict[str, int]:
        return {name: sharding.copies(spec, self.grid) for name, spec in self.specs.items()}

    def reduce_gradients(self) -> None:
        """Sum over spatial ranks where replicated, then over the data-parallel ranks (sum, not mean)."""
        self.module.reduce_gradients(data_parallel=True, average_data=False)

    def gather(self, local: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full serial tensors from this rank's shards (collective over the model group; same keys everywhere)."""
        return {k: sharding.gather(v, self.specs[k], self.grid).cpu() for k, v in local.items()}

    def shard(self, full: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's shard of each full serial tensor."""
        return {k: sharding.shard(t, self.specs[k], self.grid, k) for k, t in full.items()}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.module.gather_state_dict().items()}

    def load_full_state_dict(self, full: Mapping[str, torch.Tensor]) -> None:
        self.module.load_serial_state_dict(dict(full))


def make_shards(net: nn.Module, topo):
    """Serial shards when the model group is one rank, else the distributed model on the grid."""
    if not topo.model_parallel:
        return SerialShards(net, topo.data)
    return DistributedShards(net, topo.grid)
