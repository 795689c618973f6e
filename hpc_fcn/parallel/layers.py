"""Distributed AFNO layers on a channels-last token tile (B, h_local, w_local, C_local).

Spatial axes (h, w) split tokens; ``matmul`` splits channels (whole AFNO blocks) and the MLP hidden
width. The residual stream is channel-sharded over matmul, so norms need fp32 statistics across
matmul, the filter needs none, and the MLP needs one all-gather before ``fc1`` and one
reduce-scatter after ``fc2`` (together the volume of one all-reduce). Parameter names match the
serial layers so that state-dict keys are identical; each holds this rank's shard and carries its
:class:`~hpc_fcn.parallel.sharding.ShardSpec` (attached here, where the layer is built).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..accel.fastpath import patch_embed
from ..model import mode_window, spectral_block_mlp
from .fft import DistributedFFT2
from .grid import ProcessGrid
from .primitives import copy_to, gather_to, reduce_scatter_from
from .sharding import ShardSpec, attach
from .sharding import split as split_spec


def _param(module: nn.Module, name: str, spec: ShardSpec, local_shape, dtype: torch.dtype) -> None:
    """A zero parameter ``module.<name>`` of this rank's ``local_shape`` with its spec (weights are
    loaded from the serial model)."""
    setattr(module, name, nn.Parameter(torch.zeros(*local_shape, dtype=dtype)))
    attach(module, name, spec)


class _ParallelLinear(nn.Module):
    """y = x W^T (+ b) with W split over ``axis``; ``matmul`` is the GEMM, swappable (quantisation)."""

    def __init__(self, axis, in_features: int, out_features: int, weight_dim: int, tag: str, dtype):
        super().__init__()
        self.axis, self.in_features, self.out_features, self.tag = axis, in_features, out_features, tag
        m = axis.size
        full = (out_features, in_features)
        local = (out_features // m, in_features) if weight_dim == 0 else (out_features, in_features // m)
        _param(self, "weight", split_spec(full, (weight_dim, "matmul")), local, dtype)
        self.gemm: nn.Module | None = None

    def use_gemm(self, gemm: nn.Module) -> None:
        """Run the product through ``gemm.matmul(x)`` (e.g. a quantised GEMM built from this weight)."""
        self.gemm = gemm
        self.register_parameter("weight", None)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.gemm is None:
            return F.linear(x, self.weight, bias)
        y = self.gemm.matmul(x)
        return y if bias is None else y + bias.to(y.dtype)


class ColumnParallelLinear(_ParallelLinear):
    """Output features split over ``axis``; the input, split on its last dimension, is all-gathered first."""

    def __init__(self, axis, in_features: int, out_features: int, tag: str = "linear", dtype=torch.float32):
        super().__init__(axis, in_features, out_features, 0, tag, dtype)
        _param(self, "bias", split_spec((out_features,), (0, "matmul")), (out_features // axis.size,), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gather_to(x, self.axis, dim=-1, n=self.in_features, tag=self.tag)
        return self.matmul(x, self.bias)


class RowParallelLinear(_ParallelLinear):
    """Input features split over ``axis``; the partial products are reduce-scattered over the output
    features, then this rank's bias piece is added (after the reduction, so it is counted once)."""

    def __init__(self, axis, in_features: int, out_features: int, tag: str = "linear", dtype=torch.float32):
        super().__init__(axis, in_features, out_features, 1, tag, dtype)
        _param(self, "bias", split_spec((out_features,), (0, "matmul")), (out_features // axis.size,), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reduce_scatter_from(self.matmul(x), self.axis, dim=-1, tag=self.tag)
        return y + (self.bias if self.gemm is None else self.bias.to(y.dtype))


class DistLayerNorm(nn.Module):
    """LayerNorm over channels sharded on matmul: per-shard mean and M2 combined exactly in fp32."""

    def __init__(self, grid: ProcessGrid, dim: int, eps: float = 1e-6, dtype=torch.float32):
        super().__init__()
        self.grid, self.dim, self.eps = grid, dim, eps
        self.local_dim = dim // grid.matmul.size
        spec = split_spec((dim,), (0, "matmul"))
        _param(self, "weight", spec, (self.local_dim,), dtype)
        _param(self, "bias", spec, (self.local_dim,), dtype)

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
        rows, cols = mode_window(H, hard_thresholding_fraction)
        # transform only the kept mode columns, split over every spatial rank (the published window keeps about
        # half: all Wf columns would leave the ranks holding the upper half idle); fewer than the ranks: all
        kept = min(cols.stop, W // 2 + 1)
        self.fft = DistributedFFT2(grid, H, W, modes=kept if kept >= grid.spatial.size else None)
        self.block_size = hidden_size // num_blocks
        self.local_blocks = num_blocks // grid.matmul.size
        self.sparsity_threshold = sparsity_threshold
        bs, nb = self.block_size, self.local_blocks
        w_spec = split_spec((2, num_blocks, bs, bs), (1, "matmul"))
        b_spec = split_spec((2, num_blocks, bs), (1, "matmul"))
        _param(self, "w1", w_spec, (2, nb, bs, bs), dtype)
        _param(self, "b1", b_spec, (2, nb, bs), dtype)
        _param(self, "w2", w_spec, (2, nb, bs, bs), dtype)
        _param(self, "b2", b_spec, (2, nb, bs), dtype)
        c0, c1 = self.fft.mode_cols.start, self.fft.mode_cols.stop
        lo, hi = max(cols.start, c0), min(cols.stop, c1)  # global window clipped to local columns
        self.rows = rows
        self.cols = slice(lo - c0, hi - c0) if lo < hi else None
        # the whole local spectrum is kept: the MLP's output is the filtered spectrum (no zeros, no scatter)
        self.whole = (rows.start == 0 and rows.stop >= H and self.cols is not None
                      and self.cols == slice(0, c1 - c0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias, dtype = x, x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            B, hl, wl, C = x.shape
            spec = self.fft.rfft2(x)
            spec = spec.reshape(B, spec.shape[1], spec.shape[2], self.local_blocks, self.block_size)
            if self.whole:
                o_r, o_i = spectral_block_mlp(spec.real, spec.imag, self.w1, self.b1, self.w2, self.b2,
                                              self.sparsity_threshold)
                out = torch.complex(o_r, o_i)
            elif self.cols is not None:
                out = torch.zeros_like(spec)
                sel = spec[:, self.rows, self.cols]
                o_r, o_i = spectral_block_mlp(sel.real, sel.imag, self.w1, self.b1, self.w2, self.b2,
                                              self.sparsity_threshold)
                out[:, self.rows, self.cols] = torch.complex(o_r, o_i)
            else:  # no kept modes here; stay in the graph so every rank runs the same backward collectives
                out = spec * 0 + 0 * sum(p.sum() for p in (self.w1, self.b1, self.w2, self.b2))
            x = self.fft.irfft2(out.reshape(B, out.shape[1], out.shape[2], C))
        # bias first: the sum takes its channels-last layout, not irfft's (channels strided), which every later op
        # on the residual stream would traverse strided (the same sum: addition commutes exactly)
        return bias + x.type(dtype)


class DistMlp(nn.Module):
    """fc1 column-parallel (hidden split), fc2 row-parallel; channels in and out split on matmul."""

    def __init__(self, grid: ProcessGrid, dim: int, hidden: int, dtype=torch.float32):
        super().__init__()
        self.fc1 = ColumnParallelLinear(grid.matmul, dim, hidden, tag="mlp", dtype=dtype)
        self.fc2 = RowParallelLinear(grid.matmul, hidden, dim, tag="mlp", dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


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
        attach(self, "proj.weight", split_spec((embed_dim, in_chans, *patch_size), (0, "matmul")))
        attach(self, "proj.bias", split_spec((embed_dim,), (0, "matmul")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, rows, cols) -> (B, h_local, w_local, C_local), contiguous."""
        return patch_embed(copy_to(x, self.grid.matmul, tag="embed"), self.proj)
