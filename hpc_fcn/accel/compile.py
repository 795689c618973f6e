"""torch.compile of the dense regions (embedding, block tails, spectral GEMMs, head); the FFTs stay eager."""
from __future__ import annotations

import functools
import shutil

import torch
import torch.nn as nn

from .device import AccelError


@functools.lru_cache(maxsize=None)
def _cpu_compiler() -> str | None:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        return get_cpp_compiler()
    except Exception:  # noqa: BLE001 - any failure to find one means inductor cannot build CPU kernels
        return shutil.which("g++") or shutil.which("clang++")


def check_compile(device: torch.device) -> None:
    """Refuse torch.compile where inductor cannot build kernels (no C++ compiler on CPU, no Triton on GPU)."""
    if device.type == "cpu":
        if not _cpu_compiler():
            raise AccelError("inference.compile=true on CPU needs a C++ compiler for inductor (g++ or clang++ "
                             "on PATH, or CXX); install one or set compile: false")
    elif device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            raise AccelError("inference.compile=true on GPU needs Triton (pip install triton matching torch); "
                             "or set compile: false") from exc


def _compiler(fn):
    return torch.compile(fn, dynamic=False, fullgraph=False)


def _raise_recompile_limit(n: int) -> None:
    """Every block's tail is the same code with other weights: allow one cache entry per block."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < n:
            setattr(cfg, name, n)


def compile_fused(fused: nn.Module) -> None:
    """Swap the dense regions of a :class:`FusedAFNONet` for compiled versions (compiled lazily on first call)."""
    _raise_recompile_limit(2 * len(fused.net.blocks) + 8)
    fused.embed_fn = _compiler(fused.embed)
    fused.spectral_fn = _compiler(fused.spectral_fn)
    fused.tail_fn = _compiler(fused.tail_fn)
    fused.head_fn = _compiler(fused.head)


def compile_dense_submodules(model: nn.Module) -> list[str]:
    """Generic model (e.g. the distributed one): compile patch embedding, norms, MLPs and head in place.

    Collectives inside those modules become graph breaks and run eagerly; the filters are untouched.
    """
    names = []
    depth = len(getattr(model, "blocks", []))
    _raise_recompile_limit(3 * depth + 8)
    for name in ("patch_embed", "head"):
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Module):
            mod.compile(dynamic=False)
            names.append(name)
    for i, blk in enumerate(getattr(model, "blocks", [])):
        for name in ("norm1", "norm2", "mlp"):
            mod = getattr(blk, name, None)
            if isinstance(mod, nn.Module):
                mod.compile(dynamic=False)
                names.append(f"blocks.{i}.{name}")
    return names
