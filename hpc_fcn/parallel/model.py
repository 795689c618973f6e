"""The AFNO network spread over a process grid, loaded from and gathered to the serial state dict.

Input: this rank's pixel window ``x[..., rows, cols]`` (see :meth:`ProcessGrid.local_window`), any
batch of members. Output: the same window of the prediction, replicated over matmul.

Every parameter carries its :class:`~hpc_fcn.parallel.sharding.ShardSpec`; loading, gathering and
gradient reduction read the specs. Gradients: after ``loss.backward()`` on every rank (the loss a sum
of rank-local parts, computed identically on the matmul ranks), call
:meth:`DistributedAFNONet.reduce_gradients`.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ..model import AFNONet, unpatchify
from ..model.afnonet import add_noise, check_noise_blocks, noise_process
from ..model.checkpoint import infer_model_config
from ..model.config import MODEL_KEYS, network_config, pair, token_grid
from .grid import ProcessGrid
from .layers import DistBlock, DistLayerNorm, DistPatchEmbed
from . import sharding
from .primitives import gather, reduce_from


class DistributedAFNONet(nn.Module):
    """AFNONet decomposed over ``grid`` (h, w: tokens; matmul: channels); state dict keys as AFNONet."""

    def __init__(self, grid: ProcessGrid, img_size=(720, 1440), patch_size=8, in_chans: int = 20,
                 out_chans: int = 20, embed_dim: int = 768, depth: int = 12, mlp_ratio: float = 4.0,
                 num_blocks: int = 8, sparsity_threshold: float = 0.01, hard_thresholding_fraction: float = 1.0,
                 noise_dim: int = 0, noise_blocks: int = 1, noise_length_km: float = 0.0,
                 noise_memory_hours: float = 0.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.grid = grid
        self.img_size, self.patch_size = pair(img_size), pair(patch_size)
        self.in_chans, self.out_chans, self.embed_dim, self.depth = in_chans, out_chans, embed_dim, depth
        self.mlp_ratio, self.num_blocks = mlp_ratio, num_blocks
        self.sparsity_threshold, self.hard_thresholding_fraction = sparsity_threshold, hard_thresholding_fraction
        self.mlp_hidden = int(embed_dim * mlp_ratio)
        grid.validate_model(self.img_size, self.patch_size, embed_dim, num_blocks, self.mlp_hidden)
        self.H, self.W = token_grid(self.img_size, self.patch_size)
        self.token_rows, self.token_cols = grid.token_window(self.img_size, self.patch_size)
        self.window = grid.local_window(self.img_size, self.patch_size)
        hl = self.token_rows.stop - self.token_rows.start
        wl = self.token_cols.stop - self.token_cols.start
        cl = embed_dim // grid.matmul.size
        self.patch_embed = DistPatchEmbed(grid, in_chans, embed_dim, self.patch_size, dtype=dtype)
        # serial (1, H*W, C), held as a (1, H, W, C) grid split over h, w and matmul
        self.pos_embed = nn.Parameter(torch.zeros(1, hl, wl, cl, dtype=dtype))
        sharding.attach(self, "pos_embed", sharding.split((1, self.H, self.W, embed_dim), (1, "h"), (2, "w"),
                                                          (3, "matmul"), serial_shape=(1, self.H * self.W, embed_dim)))
        self.blocks = nn.ModuleList([
            DistBlock(grid, self.H, self.W, embed_dim, self.mlp_hidden, num_blocks, sparsity_threshold,
                      hard_thresholding_fraction, dtype=dtype) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, dtype=dtype)  # as in the checkpoint: unused, replicated
        for k, p in self.norm.named_parameters():
            sharding.attach(self, f"norm.{k}", sharding.replicated(p.shape))
        n_out = out_chans * self.patch_size[0] * self.patch_size[1]
        self.head = nn.Linear(cl, n_out, bias=False, dtype=dtype)
        sharding.attach(self, "head.weight", sharding.split((n_out, embed_dim), (1, "matmul")))
        self.noise_dim = int(noise_dim)
        self.noise_blocks = check_noise_blocks(noise_blocks, depth) if self.noise_dim else 1
        if self.noise_dim:  # stochastic model: token noise projected onto this rank's embedding channels
            self.noise_proj = nn.Linear(self.noise_dim, cl, bias=False, dtype=dtype)
            sharding.attach(self, "noise_proj.weight", sharding.split((embed_dim, self.noise_dim), (0, "matmul")))
        if self.noise_blocks > 1:  # and before blocks 1 .. noise_blocks-1, each by its own projection
            self.block_noise_proj = nn.ModuleList(nn.Linear(self.noise_dim, cl, bias=False, dtype=dtype)
                                                  for _ in range(self.noise_blocks - 1))
            for j in range(self.noise_blocks - 1):
                sharding.attach(self, f"block_noise_proj.{j}.weight",
                                sharding.split((embed_dim, self.noise_dim), (0, "matmul")))
        self.noise_length_km, self.noise_memory_hours = noise_process(self.noise_dim, noise_length_km,
                                                                      noise_memory_hours)

    # ---- construction and checkpoints --------------------------------------------------------
    @classmethod
    def from_serial(cls, model_or_state: AFNONet | Mapping[str, torch.Tensor], model_kwargs: Mapping | None,
                    grid: ProcessGrid) -> "DistributedAFNONet":
        """Shard a serial AFNONet (or its state dict) over ``grid``; every rank passes the same weights."""
        if isinstance(model_or_state, nn.Module):
            kwargs = dict(model_or_state.config())
            state = model_or_state.state_dict()
        else:
            state = dict(model_or_state)
            kwargs = dict(model_kwargs) if model_kwargs is not None else infer_model_config(state)
        if model_kwargs is not None:
            kwargs.update(model_kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k in MODEL_KEYS}
        model = cls(grid, **kwargs, dtype=state["patch_embed.proj.weight"].dtype)
        model.load_serial_state_dict(state)
        return model

    def config(self) -> dict:
        """Constructor keywords of the equivalent serial AFNONet."""
        return network_config(self)

    def load_serial_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a full serial state dict (same keys and shapes as AFNONet), keeping this rank's shards."""
        own, specs = dict(self.named_parameters()), sharding.specs(self)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"state dict does not fit DistributedAFNONet: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for key, p in own.items():
                t = sharding.shard(state[key], specs[key], self.grid, key)
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"{key}: shard {tuple(t.shape)} does not match the local parameter {tuple(p.shape)}")
                p.copy_(t)

    def gather_state_dict(self) -> dict[str, torch.Tensor]:
        """The full serial state dict on every rank of the model group (collective)."""
        specs = sharding.specs(self)
        return {k: sharding.gather(p, specs[k], self.grid) for k, p in self.named_parameters()}

    def gather_gradients(self) -> dict[str, torch.Tensor]:
        """Full serial-shaped gradients (collective; call after :meth:`reduce_gradients`)."""
        specs = sharding.specs(self)
        return {k: sharding.gather(p.grad if p.grad is not None else torch.zeros_like(p), specs[k], self.grid)
                for k, p in self.named_parameters()}

    # ---- training ----------------------------------------------------------------------------
    def reduce_gradients(self, data_parallel: bool = True, average_data: bool = True) -> None:
        """Complete the gradients after backward (see :func:`hpc_fcn.parallel.sharding.reduce_gradients`),
        then (``data_parallel``) sum or average them over the ensemble axis."""
        ens = self.grid.ensemble
        sharding.reduce_gradients(self, self.grid, ens if data_parallel else None,
                                  1.0 / ens.size if average_data else 1.0)

    # ---- forward -----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        rows, cols = self.window
        want = (rows.stop - rows.start, cols.stop - cols.start)
        if tuple(x.shape[-2:]) != want:
            raise ValueError(f"rank {self.grid.rank}: input window {tuple(x.shape[-2:])} is not this rank's "
                             f"window {want} (rows {rows.start}:{rows.stop}, cols {cols.start}:{cols.stop})")
        x = add_noise(self, self.patch_embed(x) + self.pos_embed, noise)
        for i, blk in enumerate(self.blocks):
            x = blk(add_noise(self, x, noise, i) if i else x)
        return x

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in_chans, rows_local, cols_local) -> (B, out_chans, rows_local, cols_local); ``noise``: this rank's
        token window (B, h_local, w_local, noise_dim) of a stochastic model's noise (replicated over matmul)."""
        y = reduce_from(self.head(self.forward_features(x, noise)), self.grid.matmul, tag="head")
        return unpatchify(y, self.patch_size, self.out_chans)


def scatter_field(grid: ProcessGrid, full: torch.Tensor, img_size, patch_size) -> torch.Tensor:
    """This rank's window (..., rows, cols) of a full field (every rank holds ``full``)."""
    rows, cols = grid.local_window(img_size, patch_size)
    return full[..., rows, cols].contiguous()


def gather_field(grid: ProcessGrid, local: torch.Tensor, img_size, patch_size) -> torch.Tensor:
    """The full field from every rank's window (collective over h and w; differentiable)."""
    rows, cols = grid.window_sizes(img_size, patch_size)
    x = gather(local, grid.w, dim=-1, n=cols, tag="gather_field")
    return gather(x, grid.h, dim=-2, n=rows, tag="gather_field")


__all__ = ["DistributedAFNONet", "DistLayerNorm", "gather_field", "scatter_field"]
