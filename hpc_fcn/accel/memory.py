"""How many members one forward pass carries: free memory over a per-member estimate, balanced over passes.

Two steps, kept apart so that each is a pure function of its inputs: ``members_that_fit`` turns a memory
budget into the most members one pass may carry (the limit), and ``pass_size`` spreads the members this
rank holds over the fewest passes that respect the limit, equally (``ceil(n / ceil(n / limit))``): a pass
is never larger than the members there are, so a padded CUDA-graph pass does no wasted work beyond the
last pass's remainder (fewer members than there are passes).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

# CPU: GEMM throughput saturates at a few thousand token rows; bigger passes only add memory traffic.
CPU_TOKENS_PER_PASS = 8192
CPU_MEMORY_FRACTION = 0.25  # of MemAvailable: leave room for other ranks on the node, IO buffers, the OS
GPU_MEMORY_FRACTION = 0.7  # of free device memory: leave room for the caching allocator and workspaces
MAX_MEMBERS_PER_PASS = 256


def available_bytes(device: torch.device) -> int:
    """Memory a forward pass may use now: MemAvailable on CPU (per rank on this node), free memory on a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_MEMORY_FRACTION)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        avail = info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        avail = 8 << 30
    return int(avail * CPU_MEMORY_FRACTION)


def local_tokens_and_width(model: nn.Module, image_shape: tuple[int, int]) -> tuple[int, int, float]:
    """(tokens, local embed width, MLP ratio) of one member on this rank."""
    p1, p2 = getattr(model, "patch_size", (8, 8))
    tokens = (image_shape[0] // p1) * (image_shape[1] // p2)
    width = model.pos_embed.shape[-1]
    return tokens, width, float(getattr(model, "mlp_ratio", 4.0))


def member_bytes(model: nn.Module, image_shape: tuple[int, int], in_chans: int, precision: str = "fp32",
                 cuda_graphs: bool = False) -> int:
    """Peak activation bytes of one member in one block (inference, no autograd), with a 1.5x margin.

    Live at the peak of a block: residual x, normed input n, filter output (3 fp32 token tensors), the
    kept spectrum and its hidden layer (complex, up to 2 more), the MLP hidden width (input and GELU
    output), plus the input and output images. A CUDA graph adds its static input and output images
    (its private pool holds the activations, counted once: the warm-up cache is emptied before capture).
    """
    tokens, width, ratio = local_tokens_and_width(model, image_shape)
    act = 2 if precision in ("bf16", "fp16") else 4
    block = tokens * width * (4 * 5 + act * 2 * ratio)
    images = 4 * in_chans * image_shape[0] * image_shape[1] * (5 if cuda_graphs else 3)
    return int(1.5 * (block + images))


def members_that_fit(budget_bytes: int, per_member_bytes: int, cap: int = MAX_MEMBERS_PER_PASS) -> int:
    """The most members one pass may carry: the budget over the per-member bytes, within [1, cap]."""
    return int(max(1, min(budget_bytes // max(per_member_bytes, 1), cap)))


def pass_size(n_members: int, limit: int) -> int:
    """Members per pass for ``n_members`` members when at most ``limit`` fit: the fewest passes, balanced."""
    if n_members < 1:
        raise ValueError(f"a step needs at least one member, got {n_members}")
    limit = max(1, min(int(limit), n_members))
    passes = math.ceil(n_members / limit)
    return math.ceil(n_members / passes)


def auto_members_per_pass(model: nn.Module, device: torch.device, image_shape: tuple[int, int], in_chans: int,
                          precision: str = "fp32", cuda_graphs: bool = False) -> int:
    """The most members per pass on this device now: the memory budget, capped (CPU: by a token budget)."""
    per = member_bytes(model, image_shape, in_chans, precision, cuda_graphs)
    cap = MAX_MEMBERS_PER_PASS
    if device.type == "cpu":
        tokens, _, _ = local_tokens_and_width(model, image_shape)
        cap = min(cap, max(1, math.ceil(CPU_TOKENS_PER_PASS / tokens)))
    return members_that_fit(available_bytes(device), per, cap)
