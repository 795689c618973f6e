"""Distributed AFNO layers on a channels-last token tile (B, h_local, w_local, C_local).

Spatial axes (h, w) split tokens; ``matmul`` splits channels (whole AFNO blocks) and the MLP hidden
width. The residual stream is channel-sharded over matmul, so norms need fp32 statistics across
matmul, the filter needs none, and the MLP needs one all-gather before ``fc1`` and one
reduce-scatter after ``fc2`` (together the volume of one all-reduce). Parameter names match the
serial layers so that state-dict keys are identical; each holds this rank's shard.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import mode_window, spectral_block_mlp
from .fft import DistributedFFT2
from .grid import ProcessGrid
from .primitives import copy_to, gather_to, reduce_scatter_from


def _empty(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape, dtype=dtype))


class DistLayerNorm(nn.Module):
    """LayerNorm over channels sharded on matmul: per-shard mean and M2 combined exactly in fp32."""

    def __init__(self, grid: ProcessGrid, dim: int, eps: float = 1e-6, dtype=torch.float32):
        super().__init__()
        self.grid, self.dim, self.eps = grid, dim, eps
        self.local_dim = dim // grid.matmul.size
        self.weight = _empty(self.local_dim, dtype=dtype)
        self.bias = _empty(self.local_dim, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mm = self.grid.matmul
        if mm.size == 1:
            return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean_l = xf.mean(dim=-1, keepdim=True)
        m2_l = (xf - mean_l).square().sum(dim=-1, keepdim=True)
        stats = gather_to(torch.cat([mean_l, m2_l], dim=-1), mm, dim=-1, n=2 * mm.size, tag="norm")
        means, m2s = stats[..., 0::2], stats[..., 1::2]
        mean = means.mean(dim=-1, keepdim=True)
        # Chan et al.: total M2 = sum of shard M2 + n_shard * sum of (shard mean - mean)^2
        var = (m2s.sum(dim=-1, keepdim=True) + self.local_dim * (means - mean).square().sum(dim=-1, keepdim=True)) / self.dim
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        return (y * self.weight + self.bias).to(x.dtype)


class DistAFNO2D(nn.Module):
    """AFNO filter on a spatial tile: distributed rfft2, block MLP on this rank's blocks and modes, irfft2."""

    def __init__(self, grid: ProcessGrid, H: int, W: int, hidden_size: int, num_blocks: int,
                 sparsity_threshold: float, hard_thresholding_fraction: float, dtype=torch.float32):
        super().__init__()
        self.grid = grid
        self.fft = DistributedFFT2(grid, H, W)
        self.block_size = hidden_size // num_blocks
        self.local_blocks = num_blocks // grid.matmul.size
        self.sparsity_threshold = sparsity_threshold
        bs, nb = self.block_size, self.local_blocks
        self.w1 = _empty(2, nb, bs, bs, dtype=dtype)
        self.b1 = _empty(2, nb, bs, dtype=dtype)
        self.w2 = _empty(2, nb, bs, bs, dtype=dtype)
        self.b2 = _empty(2, nb, bs, dtype=dtype)
        rows, cols = mode_window(H, hard_thresholding_fraction)
        c0, c1 = self.fft.mode_cols.start, self.fft.mode_cols.stop
        lo, hi = max(cols.start, c0), min(cols.stop, c1)  # global window clipped to local columns
        self.rows = rows
        self.cols = slice(lo - c0, hi - c0) if lo < hi else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias, dtype = x, x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            B, hl, wl, C = x.shape
            spec = self.fft.rfft2(x)
            spec = spec.reshape(B, spec.shape[1], spec.shape[2], self.local_blocks, self.block_size)
            out = torch.zeros_like(spec)
            if self.cols is not None:
                sel = spec[:, self.rows, self.cols]
                o_r, o_i = spectral_block_mlp(sel.real, sel.imag, self.w1, self.b1, self.w2, self.b2,
                                              self.sparsity_threshold)
                out[:, self.rows, self.cols] = torch.complex(o_r, o_i)
            else:  # no kept modes here; stay in the graph so every rank runs the same backward collectives
                out = spec * 0 + 0 * sum(p.sum() for p in (self.w1, self.b1, self.w2, self.b2))
            x = self.fft.irfft2(out.reshape(B, out.shape[1], out.shape[2], C))
        return x.type(dtype) + bias


class DistMlp(nn.Module):
    """fc1 column-parallel (hidden sharded), fc2 row-parallel; channels in and out sharded on matmul."""

    def __init__(self, grid: ProcessGrid, dim: int, hidden: int, dtype=torch.float32):
        super().__init__()
        self.grid, self.dim = grid, dim
        m = grid.matmul.size
        self.fc1 = nn.Linear(dim, hidden // m, dtype=dtype)
        self.fc2 = nn.Linear(hidden // m, dim, dtype=dtype)
        self.fc2.bias = _empty(dim // m, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mm = self.grid.matmul
        x = gather_to(x, mm, dim=-1, n=self.dim, tag="mlp")
        x = F.gelu(self.fc1(x))
        x = reduce_scatter_from(F.linear(x, self.fc2.weight), mm, dim=-1, tag="mlp")
        return x + self.fc2.bias


class DistBlock(nn.Module):
    """The published double-skip block on a distributed tile."""

    def __init__(self, grid: ProcessGrid, H: int, W: int, dim: int, mlp_hidden: int, num_blocks: int,
                 sparsity_threshold: float, hard_thresholding_fraction: float, dtype=torch.float32):
        super().__init__()
        self.norm1 = DistLayerNorm(grid, dim, dtype=dtype)
        self.filter = DistAFNO2D(grid, H, W, dim, num_blocks, sparsity_threshold, hard_thresholding_fraction,
                                 dtype=dtype)
        self.norm2 = DistLayerNorm(grid, dim, dtype=dtype)
        self.mlp = DistMlp(grid, dim, mlp_hidden, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.filter(self.norm1(x)) + x
        return x + self.mlp(self.norm2(x))


class DistPatchEmbed(nn.Module):
    """Conv2d(kernel = stride = patch) on the local pixel tile; output channels sharded on matmul."""

    def __init__(self, grid: ProcessGrid, in_chans: int, embed_dim: int, patch_size: tuple[int, int],
                 dtype=torch.float32):
        super().__init__()
        self.grid = grid
        self.proj = nn.Conv2d(in_chans, embed_dim // grid.matmul.size, kernel_size=patch_size,
                              stride=patch_size, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, rows, cols) -> (B, h_local, w_local, C_local)."""
        return self.proj(copy_to(x, self.grid.matmul, tag="embed")).permute(0, 2, 3, 1)
