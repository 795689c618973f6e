"""Config sections shared by the applications (model, data, parallel layout)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import fail


@dataclass
class ModelConfig:
    """The AFNONet hyper-parameters; channel counts come from ``data.channels``."""
    img_size: tuple[int, int] = (720, 1440)
    patch_size: int = 8
    embed_dim: int = 768
    depth: int = 12
    mlp_ratio: float = 4.0
    num_blocks: int = 8
    sparsity_threshold: float = 0.01
    hard_thresholding_fraction: float = 1.0
    checkpoint: str | None = None  # a file, 'builtin' (the committed trained model) or null (random weights)
    seed: int = 0  # for random weights

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        for i, n in enumerate(self.img_size):
            if n <= 0 or n % self.patch_size:
                fail(f"{p}img_size", f"{self.img_size[i]} must be a positive multiple of patch_size={self.patch_size}")
        for name in ("patch_size", "embed_dim", "depth", "num_blocks"):
            if getattr(self, name) <= 0:
                fail(f"{p}{name}", f"must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.num_blocks:
            fail(f"{p}num_blocks", f"must divide embed_dim={self.embed_dim}, got {self.num_blocks}")
        if not 0.0 < self.hard_thresholding_fraction <= 1.0:
            fail(f"{p}hard_thresholding_fraction", f"must be in (0, 1], got {self.hard_thresholding_fraction}")
        if self.mlp_ratio <= 0:
            fail(f"{p}mlp_ratio", f"must be positive, got {self.mlp_ratio}")

    def kwargs(self, in_chans: int, out_chans: int) -> dict:
        """AFNONet constructor keywords."""
        return dict(img_size=tuple(self.img_size), patch_size=self.patch_size, in_chans=in_chans,
                    out_chans=out_chans, embed_dim=self.embed_dim, depth=self.depth, mlp_ratio=self.mlp_ratio,
                    num_blocks=self.num_blocks, sparsity_threshold=self.sparsity_threshold,
                    hard_thresholding_fraction=self.hard_thresholding_fraction)


@dataclass
class DataConfig:
    """Where the FourCastNet-layout data lives and which channels the model uses."""
    root: str = "builtin"  # a directory, or 'builtin' for the built-in shallow-water dataset
    channels: list[str] | None = None  # by name; null = every channel of the dataset
    train_dir: str = "train"
    valid_dir: str = "test"  # FourCastNet keeps its validation years in test/
    test_dir: str = "out_of_sample"
    stats_dir: str = "stats"

    def split_dir(self, split: str) -> str:
        """The sub-folder of ``root`` that holds ``split`` ('train' | 'valid' | 'test'): its ``<split>_dir``."""
        return getattr(self, f"{split}_dir")


@dataclass
class ParallelConfig:
    """The process grid ``ensemble x h x w x matmul``; ``ensemble: auto`` takes the ranks left over."""
    ensemble: int | Literal["auto"] = "auto"
    h: int = 1
    w: int = 1
    matmul: int = 1
    backend: Literal["mpi", "torch"] = "mpi"
    layout: Literal["manual", "auto"] = "manual"  # auto: the performance model picks h, w, matmul
    hardware: str = "auto"  # for layout auto: a perfmodel hardware name or YAML; auto = h100 / this_machine
    threads: int = 0  # torch threads per rank; 0 = cores / ranks on this node

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        for name in ("h", "w", "matmul"):
            if getattr(self, name) < 1:
                fail(f"{p}{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.ensemble != "auto" and self.ensemble < 1:
            fail(f"{p}ensemble", f"must be >= 1 or 'auto', got {self.ensemble}")
        if self.threads < 0:
            fail(f"{p}threads", f"must be >= 0, got {self.threads}")


__all__ = ["ModelConfig", "DataConfig", "ParallelConfig", "InferenceConfig"]


@dataclass
class InferenceConfig:
    """How each forward pass runs: device, precision, CUDA graphs, torch.compile, quantisation."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = "fp32"
    cuda_graphs: bool = False
    compile: bool = False
    quantize: Literal["none", "int8", "fp8"] = "none"
    members_per_pass: int = 0  # members in one forward pass per rank; 0 = as many as fit in memory

    def validate(self, prefix: str) -> None:
        if self.members_per_pass < 0:
            fail(f"{prefix}.members_per_pass", f"must be >= 0 (0 = automatic), got {self.members_per_pass}")
