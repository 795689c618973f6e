"""Config sections shared by the applications (model, data, parallel layout, inference).

The model section and its derived shapes live in :mod:`hpc_fcn.model.config`; re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .config import fail
from .data.era5 import split_problem
from .model.config import ModelConfig


_SPLIT_FOLDERS = ("removed: a split is read from the folder of its name under data.root (train/, test/, "
                  "out_of_sample/, as python -m hpc_fcn.data.convert --split writes them); delete this key")


@dataclass
class DataConfig:
    """Where the FourCastNet-layout data lives and which channels the model uses."""
    root: str = "builtin"  # a directory, or 'builtin' for the built-in shallow-water dataset
    channels: list[str] | None = None  # by name; null = every channel of the dataset
    stats_dir: str = "stats"  # sub-folder with global_means.npy, global_stds.npy, time_means.npy
    REMOVED_KEYS: ClassVar[dict[str, str]] = {  # the folder keys of releases before the splits were named by folder
        "train_dir": _SPLIT_FOLDERS, "test_dir": _SPLIT_FOLDERS + " (split 'test' now reads test/; the held-out "
                                                                  "years are split 'out_of_sample')",
        "valid_dir": _SPLIT_FOLDERS + " (the validation years are split 'test', read from test/)"}

    def split_dir(self, split: str) -> str:
        """The sub-folder of ``root`` that holds ``split`` (one of SPLITS): the split's own name."""
        return split


def check_split(split: str, key: str) -> None:
    """Fail naming config ``key`` unless ``split`` is a split name (an old name says the new one)."""
    problem = split_problem(split)
    if problem:
        fail(key, problem)


@dataclass
class ParallelConfig:
    """The process grid ``ensemble x h x w x matmul``; ``ensemble: auto`` takes the ranks left over."""
    NOT_RESULTS: ClassVar[dict[str, str]] = {  # fields that cannot change a result, and why (ensemble/identity)
        "ensemble": "the layout: members are the same on every layout (tests/mpi/test_ensemble_mpi.py)",
        "h": "the layout (see ensemble)", "w": "the layout (see ensemble)", "matmul": "the layout (see ensemble)",
        "backend": "MPI or torch.distributed move the same sums (tests/mpi/test_dist_model.py)",
        "layout": "how the layout is chosen (see ensemble)", "hardware": "the performance model's input (see layout)",
        "threads": "threads per rank reorder sums only, as a layout does"}
    ensemble: int | Literal["auto"] = "auto"  # ranks on the ensemble axis; auto = the world size over h x w x matmul
    h: int = 1  # ranks splitting the grid's rows (latitude)
    w: int = 1  # ranks splitting the grid's columns (longitude)
    matmul: int = 1  # ranks splitting each block's channels (tensor parallel)
    backend: Literal["mpi", "torch"] = "mpi"  # collectives through mpi4py or torch.distributed (NCCL on GPUs)
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
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = a GPU when torch sees one, else cpu
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = "fp32"  # forward-pass arithmetic (tf32/bf16/fp16: GPUs)
    cuda_graphs: bool = False  # replay each step as a CUDA graph (GPU only)
    compile: bool = False  # torch.compile the model
    quantize: Literal["none", "int8", "fp8"] = "none"  # int8 / fp8 weights and activations of the linear layers
    members_per_pass: int = 0  # members in one forward pass per rank; 0 = as many as fit in memory

    def validate(self, prefix: str) -> None:
        if self.members_per_pass < 0:
            fail(f"{prefix}.members_per_pass", f"must be >= 0 (0 = automatic), got {self.members_per_pass}")
