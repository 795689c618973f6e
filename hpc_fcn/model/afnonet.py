"""The published FourCastNet AFNO network, state-dict compatible with the released checkpoints."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NOISE_PROCESS_KEYS, block_size, mode_window, network_config, pair, token_grid


def spectral_block_mlp(xr: torch.Tensor, xi: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                       w2: torch.Tensor, b2: torch.Tensor, lambd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-layer complex block-diagonal MLP on (..., nb, bs) real/imag parts, then softshrink.

    ``w1``/``w2`` are [2, nb, bs, bs] (real, imaginary), ``b1``/``b2`` are [2, nb, bs]; ``nb`` may be
    a shard of the blocks, which is how the channel-parallel filter reuses this function.
    """
    o1r = F.relu(torch.einsum("...bi,bio->...bo", xr, w1[0])
                 - torch.einsum("...bi,bio->...bo", xi, w1[1]) + b1[0])
    o1i = F.relu(torch.einsum("...bi,bio->...bo", xi, w1[0])
                 + torch.einsum("...bi,bio->...bo", xr, w1[1]) + b1[1])
    o2r = (torch.einsum("...bi,bio->...bo", o1r, w2[0])
           - torch.einsum("...bi,bio->...bo", o1i, w2[1]) + b2[0])
    o2i = (torch.einsum("...bi,bio->...bo", o1i, w2[0])
           + torch.einsum("...bi,bio->...bo", o1r, w2[1]) + b2[1])
    return F.softshrink(o2r, lambd), F.softshrink(o2i, lambd)


class AFNO2D(nn.Module):
    """Adaptive Fourier Neural Operator token mixer; always computed in fp32, adds its input back."""

    def __init__(self, hidden_size: int, num_blocks: int = 8, sparsity_threshold: float = 0.01,
                 hard_thresholding_fraction: float = 1.0, hidden_size_factor: int = 1):
        super().__init__()
        self.block_size = block_size(hidden_size, num_blocks)
        self.hidden_size = hidden_size
        self.sparsity_threshold = sparsity_threshold
        self.num_blocks = num_blocks
        self.hard_thresholding_fraction = hard_thresholding_fraction
        self.hidden_size_factor = hidden_size_factor
        self.scale = 0.02
        bs, f = self.block_size, hidden_size_factor
        self.w1 = nn.Parameter(self.scale * torch.randn(2, num_blocks, bs, bs * f))
        self.b1 = nn.Parameter(self.scale * torch.randn(2, num_blocks, bs * f))
        self.w2 = nn.Parameter(self.scale * torch.randn(2, num_blocks, bs * f, bs))
        self.b2 = nn.Parameter(self.scale * torch.randn(2, num_blocks, bs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = x
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()  # the published filter always runs in (at least) fp32
            B, H, W, C = x.shape
            spec = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
            spec = spec.reshape(B, H, W // 2 + 1, self.num_blocks, self.block_size)
            rows, cols = mode_window(H, self.hard_thresholding_fraction)
            sel = spec[:, rows, cols]
            o_r, o_i = spectral_block_mlp(sel.real, sel.imag, self.w1, self.b1, self.w2, self.b2,
                                          self.sparsity_threshold)
            out = torch.zeros_like(spec)
            out[:, rows, cols] = torch.complex(o_r, o_i)
            out = out.reshape(B, H, W // 2 + 1, C)
            x = torch.fft.irfft2(out, s=(H, W), dim=(1, 2), norm="ortho")
        return x.type(dtype) + bias


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """AFNO block with the published double skip: x + n + AFNO(n), then x + MLP(norm2(x))."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, num_blocks: int = 8,
                 sparsity_threshold: float = 0.01, hard_thresholding_fraction: float = 1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.filter = AFNO2D(dim, num_blocks, sparsity_threshold, hard_thresholding_fraction)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.filter(self.norm1(x)) + residual
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, img_size: tuple[int, int], patch_size: tuple[int, int], in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = math.prod(token_grid(img_size, patch_size))
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def unpatchify(x: torch.Tensor, patch_size: tuple[int, int], out_chans: int) -> torch.Tensor:
    """``b h w (p1 p2 c) -> b c (h p1) (w p2)``, the published head layout."""
    b, h, w, _ = x.shape
    p1, p2 = patch_size
    x = x.reshape(b, h, w, p1, p2, out_chans)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, out_chans, h * p1, w * p2)


class AFNONet(nn.Module):
    """FourCastNet backbone; the defaults are the released production model (74,691,840 parameters)."""

    def __init__(self, img_size: Sequence[int] = (720, 1440), patch_size: int | Sequence[int] = 8,
                 in_chans: int = 20, out_chans: int = 20, embed_dim: int = 768, depth: int = 12,
                 mlp_ratio: float = 4.0, num_blocks: int = 8, sparsity_threshold: float = 0.01,
                 hard_thresholding_fraction: float = 1.0, noise_dim: int = 0, noise_blocks: int = 1,
                 noise_length_km: float = 0.0, noise_memory_hours: float = 0.0):
        super().__init__()
        self.img_size = pair(img_size)
        self.patch_size = pair(patch_size)
        self.h, self.w = token_grid(self.img_size, self.patch_size)
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.mlp_ratio = mlp_ratio
        self.num_blocks = num_blocks
        self.sparsity_threshold = sparsity_threshold
        self.hard_thresholding_fraction = hard_thresholding_fraction
        self.patch_embed = PatchEmbed(self.img_size, self.patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.blocks = nn.ModuleList([
            Block(embed_dim, mlp_ratio, num_blocks, sparsity_threshold, hard_thresholding_fraction)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)  # in the checkpoint, never used in forward
        self.head = nn.Linear(embed_dim, out_chans * self.patch_size[0] * self.patch_size[1], bias=False)
        # Stochastic model: ``noise_dim`` unit normals per token, projected into the token embedding and, with
        # ``noise_blocks`` > 1, by a projection of their own into the residual stream before blocks 1 .. noise_blocks-1.
        self.noise_dim = int(noise_dim)
        self.noise_blocks = check_noise_blocks(noise_blocks, depth) if self.noise_dim else 1
        if self.noise_dim:
            self.noise_proj = nn.Linear(self.noise_dim, embed_dim, bias=False)
        if self.noise_blocks > 1:
            self.block_noise_proj = nn.ModuleList(nn.Linear(self.noise_dim, embed_dim, bias=False)
                                                  for _ in range(self.noise_blocks - 1))
        # the noise process the projections were trained with (hpc_fcn.ensemble.model_noise): kept with the weights
        self.noise_length_km, self.noise_memory_hours = noise_process(self.noise_dim, noise_length_km,
                                                                      noise_memory_hours)
        if not any(p.is_meta for p in self.parameters()):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def config(self) -> dict:
        """Constructor keywords that rebuild this network (stored in our checkpoints)."""
        return network_config(self)

    def forward_features(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input grid {tuple(x.shape[-2:])} does not match img_size {self.img_size}")
        x = self.patch_embed(x) + self.pos_embed
        x = add_noise(self, x.reshape(b, self.h, self.w, self.embed_dim), noise)
        for i, blk in enumerate(self.blocks):
            x = blk(add_noise(self, x, noise, i) if i else x)
        return x

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One step; ``noise`` (B, h, w, noise_dim) token noise of a stochastic model (None: the deterministic path)."""
        return unpatchify(self.head(self.forward_features(x, noise)), self.patch_size, self.out_chans)


def check_noise_blocks(noise_blocks: int, depth: int) -> int:
    """``noise_blocks``: how many blocks, from the first, get the token noise (1: after the embedding only)."""
    if not 1 <= int(noise_blocks) <= depth:
        raise ValueError(f"noise_blocks must be between 1 and depth={depth}, got {noise_blocks}")
    return int(noise_blocks)


def noise_process(noise_dim: int, length_km: float, memory_hours: float) -> tuple[float, float]:
    """The (correlation length, e-folding time) of a stochastic model's token noise; 0 is white (none)."""
    for name, v in zip(NOISE_PROCESS_KEYS, (length_km, memory_hours)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    return (float(length_km), float(memory_hours)) if noise_dim else (0.0, 0.0)


def add_noise(net: nn.Module, tokens: torch.Tensor, noise: torch.Tensor | None, block: int = 0) -> torch.Tensor:
    """``tokens`` (B, h, w, C) entering block ``block``, plus the token ``noise`` (B, h, w, noise_dim) of a
    stochastic model through that block's projection (blocks at or past ``net.noise_blocks`` get none).

    Without noise (or for a deterministic model) the tokens pass unchanged: that path is the control
    forecast. Noise given to a deterministic model is an error, never silently dropped.
    """
    if noise is None:
        return tokens
    if block:
        if block >= getattr(net, "noise_blocks", 1):
            return tokens
        return tokens + net.block_noise_proj[block - 1](noise.to(tokens.dtype))
    dim = getattr(net, "noise_dim", 0)
    if not dim:
        raise ValueError("model noise was given but this model is deterministic (noise_dim 0): use a stochastic "
                         "checkpoint (model.stochastic: true)")
    if noise.shape[:-1] != tokens.shape[:-1] or noise.shape[-1] != dim:
        raise ValueError(f"model noise {tuple(noise.shape)} does not fit the tokens {tuple(tokens.shape[:-1])} "
                         f"x noise_dim {dim}")
    return tokens + net.noise_proj(noise.to(tokens.dtype))


class PeriodicPad2d(nn.Module):
    """Circular padding in longitude, zero padding in latitude (published precipitation head)."""

    def __init__(self, pad_width: int):
        super().__init__()
        self.pad_width = pad_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad_width
        x = F.pad(x, (p, p, 0, 0), mode="circular")
        return F.pad(x, (0, 0, p, p), mode="constant", value=0.0)


class PrecipNet(nn.Module):
    """Published total-precipitation model: a one-output backbone, periodic pad, 3x3 conv, ReLU."""

    def __init__(self, backbone: AFNONet | None = None, **backbone_kwargs):
        super().__init__()
        if backbone is None:
            backbone_kwargs.setdefault("out_chans", 1)
            backbone = AFNONet(**backbone_kwargs)
        self.backbone = backbone
        self.out_chans = backbone.out_chans
        self.ppad = PeriodicPad2d(1)
        self.conv = nn.Conv2d(self.out_chans, self.out_chans, kernel_size=3, stride=1, padding=0, bias=True)
        self.act = nn.ReLU()

    def config(self) -> dict:
        return dict(self.backbone.config(), precip=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.ppad(self.backbone(x))))


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
