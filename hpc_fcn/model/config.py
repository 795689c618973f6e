"""The AFNONet hyper-parameters (the ``model:`` config section) and every shape derived from them.

One place for the arithmetic that the model, the process grid, the layout checks and the performance
model all need: the token grid, the rfft mode columns, the MLP width, the AFNO block size and the
window of kept modes. Pure Python (no torch), so the performance model can use it cheaply.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from ..config import fail


def pair(v) -> tuple[int, int]:
    """An int or a pair as a pair of ints (img_size, patch_size)."""
    if isinstance(v, numbers.Integral):
        return (int(v), int(v))
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return v  # type: ignore[return-value]


def token_grid(img_size, patch_size) -> tuple[int, int]:
    """The token grid H x W: the image over the patch (ValueError when it does not divide)."""
    (H, W), (p1, p2) = pair(img_size), pair(patch_size)
    if H % p1 or W % p2:
        raise ValueError(f"img_size {H} x {W} is not a multiple of the patch {p1} x {p2}")
    return H // p1, W // p2


def block_size(embed_dim: int, num_blocks: int) -> int:
    """Channels per AFNO block: the embedding over the blocks (ValueError when they do not divide it)."""
    if embed_dim % num_blocks:
        raise ValueError(f"num_blocks {num_blocks} does not divide embed_dim {embed_dim}")
    return embed_dim // num_blocks


def mode_window(h: int, hard_thresholding_fraction: float) -> tuple[slice, slice]:
    """Rows and columns of the rfft2 output that the spectral MLP acts on (all others are zeroed).

    Reproduces the published quirk: the cut-off is computed from the row count ``h`` and
    applied to both the rows (``[total-kept, total+kept)``) and the rfft columns (``[0, kept)``).
    """
    total = h // 2 + 1
    kept = int(total * hard_thresholding_fraction)
    return slice(max(total - kept, 0), min(total + kept, h)), slice(0, kept)


NOISE_PROCESS_KEYS = ("noise_length_km", "noise_memory_hours")  # the noise a stochastic model was trained with
# AFNONet's (and DistributedAFNONet's) constructor keywords: what a network's config() holds
MODEL_KEYS = ("img_size", "patch_size", "in_chans", "out_chans", "embed_dim", "depth", "mlp_ratio", "num_blocks",
              "sparsity_threshold", "hard_thresholding_fraction", "noise_dim", "noise_blocks") + NOISE_PROCESS_KEYS


def network_config(net) -> dict:
    """The constructor keywords that rebuild ``net`` (an AFNONet or its distributed twin), as checkpoints store them.

    The published (deterministic) config stays as it was: the noise keys appear only when they are set.
    """
    cfg = dict(img_size=list(net.img_size), patch_size=list(net.patch_size), in_chans=net.in_chans,
               out_chans=net.out_chans, embed_dim=net.embed_dim, depth=net.depth, mlp_ratio=net.mlp_ratio,
               num_blocks=net.num_blocks, sparsity_threshold=net.sparsity_threshold,
               hard_thresholding_fraction=net.hard_thresholding_fraction)
    if net.noise_dim:
        cfg["noise_dim"] = net.noise_dim
    if net.noise_blocks > 1:
        cfg["noise_blocks"] = net.noise_blocks
    cfg.update({k: getattr(net, k) for k in NOISE_PROCESS_KEYS if getattr(net, k, 0.0)})
    return cfg


@dataclass
class ModelConfig:
    """The AFNONet hyper-parameters; channel counts come from ``data.channels``."""
    img_size: tuple[int, int] = (720, 1440)  # model grid [rows, columns] (a checkpoint's own wins)
    patch_size: int = 8  # patch side in grid points: the token grid is img_size / patch_size
    embed_dim: int = 768  # channels of each token
    depth: int = 12  # AFNO blocks
    mlp_ratio: float = 4.0  # hidden width of each block's MLP over embed_dim
    num_blocks: int = 8  # block-diagonal blocks of the spectral MLP (must divide embed_dim)
    sparsity_threshold: float = 0.01  # softshrink lambda of the spectral MLP
    hard_thresholding_fraction: float = 1.0  # fraction of Fourier modes kept (1 = all)
    checkpoint: str | None = None  # a file, 'builtin' (the committed trained model) or null (random weights)
    seed: int = 0  # for random weights
    stochastic: bool = False  # the stochastic model: token noise per member and step (builtin: its own checkpoint)
    noise_dim: int = 32  # stochastic: noise channels per token (a new model's; a checkpoint's own wins)
    noise_blocks: int = 1  # stochastic: the noise enters the first this many blocks (a new model's; a checkpoint's wins)
    noise_length_km: float = 0.0  # stochastic: noise correlation length on the sphere (0: white; a checkpoint's wins)
    noise_memory_hours: float = 0.0  # stochastic: its e-folding time, AR(1) over steps (0: none; a checkpoint's wins)
    noise_scale: float = 1.0  # stochastic, ensemble app: multiplies the trained unit noise (1: as trained)

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        for name in ("patch_size", "embed_dim", "depth", "num_blocks"):
            if getattr(self, name) <= 0:
                fail(f"{p}{name}", f"must be positive, got {getattr(self, name)}")
        for i, n in enumerate(self.img_size):
            if n <= 0 or n % self.patch_size:
                fail(f"{p}img_size", f"{self.img_size[i]} must be a positive multiple of patch_size={self.patch_size}")
        if self.sparsity_threshold < 0:
            fail(f"{p}sparsity_threshold", f"must be >= 0 (softshrink's lambda), got {self.sparsity_threshold}")
        if not 0 <= self.seed < 2 ** 64:
            fail(f"{p}seed", f"must be in 0 .. 2**64 - 1 (torch.manual_seed), got {self.seed}")
        try:
            block_size(self.embed_dim, self.num_blocks)
        except ValueError:
            fail(f"{p}num_blocks", f"must divide embed_dim={self.embed_dim}, got {self.num_blocks}")
        if not 0.0 < self.hard_thresholding_fraction <= 1.0:
            fail(f"{p}hard_thresholding_fraction", f"must be in (0, 1], got {self.hard_thresholding_fraction}")
        if self.mlp_ratio <= 0:
            fail(f"{p}mlp_ratio", f"must be positive, got {self.mlp_ratio}")
        if self.noise_dim < 1:
            fail(f"{p}noise_dim", f"must be >= 1, got {self.noise_dim}")
        if not 1 <= self.noise_blocks <= self.depth:
            fail(f"{p}noise_blocks", f"must be between 1 and depth={self.depth}, got {self.noise_blocks}")
        for name in ("noise_length_km", "noise_memory_hours"):
            if getattr(self, name) < 0:
                fail(f"{p}{name}", f"must be >= 0 (0: none), got {getattr(self, name)}")
        if not self.noise_scale > 0:
            fail(f"{p}noise_scale", f"must be > 0 (1: the noise as trained), got {self.noise_scale}")

    def kwargs(self, in_chans: int, out_chans: int) -> dict:
        """AFNONet constructor keywords."""
        return dict(img_size=tuple(self.img_size), patch_size=self.patch_size, in_chans=in_chans,
                    out_chans=out_chans, embed_dim=self.embed_dim, depth=self.depth, mlp_ratio=self.mlp_ratio,
                    num_blocks=self.num_blocks, sparsity_threshold=self.sparsity_threshold,
                    hard_thresholding_fraction=self.hard_thresholding_fraction,
                    noise_dim=self.noise_dim if self.stochastic else 0,
                    noise_blocks=self.noise_blocks if self.stochastic else 1,
                    **(dict(noise_length_km=self.noise_length_km, noise_memory_hours=self.noise_memory_hours)
                       if self.stochastic else {}))

    def shape(self, in_chans: int = 20, out_chans: int | None = None) -> "ModelShape":
        return ModelShape.of(self.kwargs(in_chans, in_chans if out_chans is None else out_chans))


@dataclass(frozen=True)
class ModelShape:
    """The sizes of one AFNONet, from its constructor keywords (:meth:`of`)."""
    img: tuple[int, int]
    patch: tuple[int, int]
    in_chans: int
    out_chans: int
    embed_dim: int
    depth: int
    num_blocks: int
    mlp_hidden: int
    hard_thresholding_fraction: float = 1.0

    @classmethod
    def of(cls, kw: Mapping[str, Any]) -> "ModelShape":
        """From AFNONet keywords (missing ones take AFNONet's defaults); ValueError when inconsistent."""
        img, patch = pair(kw.get("img_size", (720, 1440))), pair(kw.get("patch_size", 8))
        C, nb = int(kw.get("embed_dim", 768)), int(kw.get("num_blocks", 8))
        token_grid(img, patch)
        block_size(C, nb)
        in_chans = int(kw.get("in_chans", 20))
        return cls(img, patch, in_chans, int(kw.get("out_chans", in_chans)), C, int(kw.get("depth", 12)), nb,
                   int(C * float(kw.get("mlp_ratio", 4.0))), float(kw.get("hard_thresholding_fraction", 1.0)))

    @property
    def tokens(self) -> tuple[int, int]:
        """The token grid H x W (image over patch)."""
        return token_grid(self.img, self.patch)

    @property
    def H(self) -> int:
        return self.tokens[0]

    @property
    def W(self) -> int:
        return self.tokens[1]

    @property
    def Wf(self) -> int:
        """rfft columns of the token grid."""
        return self.W // 2 + 1

    @property
    def block_size(self) -> int:
        return block_size(self.embed_dim, self.num_blocks)

    @property
    def modes(self) -> tuple[slice, slice]:
        """The kept rows and rfft columns (:func:`mode_window`), the columns clipped to the Wf that exist."""
        rows, cols = mode_window(self.H, self.hard_thresholding_fraction)
        return rows, slice(0, min(cols.stop, self.Wf))


__all__ = ["MODEL_KEYS", "NOISE_PROCESS_KEYS", "ModelConfig", "ModelShape", "block_size", "mode_window",
           "network_config", "pair", "token_grid"]
