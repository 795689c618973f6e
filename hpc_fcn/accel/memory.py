"""How many members one forward pass may carry: free memory over a per-member activation estimate."""
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


def member_bytes(model: nn.Module, image_shape: tuple[int, int], in_chans: int, precision: str = "fp32") -> int:
    """Peak activation bytes of one member in one block (inference, no autograd), with a 1.5x margin.

    Live at the peak of a block: residual x, normed input n, filter output (3 fp32 token tensors), the
    kept spectrum and its hidden layer (complex, up to 2 more), the MLP hidden width (input and GELU
    output), plus the input and output images.
    """
    tokens, width, ratio = local_tokens_and_width(model, image_shape)
    act = 2 if precision in ("bf16", "fp16") else 4
    block = tokens * width * (4 * 5 + act * 2 * ratio)
    images = 4 * in_chans * image_shape[0] * image_shape[1] * 3
    return int(1.5 * (block + images))


def auto_members_per_pass(model: nn.Module, device: torch.device, image_shape: tuple[int, int], in_chans: int,
                          precision: str = "fp32") -> int:
    """Members per pass: as many as fit in the memory budget, capped (CPU: by a token budget) and >= 1."""
    per = member_bytes(model, image_shape, in_chans, precision)
    fit = available_bytes(device) // max(per, 1)
    cap = MAX_MEMBERS_PER_PASS
    if device.type == "cpu":
        tokens, _, _ = local_tokens_and_width(model, image_shape)
        cap = min(cap, max(1, math.ceil(CPU_TOKENS_PER_PASS / tokens)))
    return int(max(1, min(fit, cap)))
