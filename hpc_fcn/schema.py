"""Config sections shared by the applications (model, data, parallel layout, inference).

The model section and its derived shapes live in :mod:`hpc_fcn.model.config`; re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .config import fail
from .model.config import ModelConfig


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
    NOT_RESULTS: ClassVar[dict[str, str]] = {  # fields that cannot change a result, and why (ensemble/identity)
        "ensemble": "the layout: members are the same on every layout (tests/mpi/test_ensemble_mpi.py)",
        "h": "the layout (see ensemble)", "w": "the layout (see ensemble)", "matmul": "the layout (see ensemble)",
        "backend": "MPI or torch.distributed move the same sums (tests/mpi/test_dist_model.py)",
        "layout": "how the layout is chosen (see ensemble)", "hardware": "the performance model's input (see layout)",
        "threads": "threads per rank reorder sums only, as a layout does"}
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
    NOT_RESULTS: ClassVar[dict[str, str]] = {  # fields that cannot change a result, and why (ensemble/identity)
        "device": "where the same arithmetic runs; precision and quantize are their own keys",
        "cuda_graphs": "replays the kernels of an eager step (tests/test_forecaster.py)",
        "compile": "fuses the same arithmetic (tests/test_forecaster.py)",
        "members_per_pass": "members are the same in any batch (tests/mpi/test_ensemble_mpi.py)"}
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = "fp32"
    cuda_graphs: bool = False
    compile: bool = False
    quantize: Literal["none", "int8", "fp8"] = "none"
    members_per_pass: int = 0  # members in one forward pass per rank; 0 = as many as fit in memory

    def validate(self, prefix: str) -> None:
        if self.members_per_pass < 0:
            fail(f"{prefix}.members_per_pass", f"must be >= 0 (0 = automatic), got {self.members_per_pass}")
