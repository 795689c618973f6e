"""Device selection and the hardware facts the accelerated paths depend on (CPU ISA flags, GPU generation)."""
from __future__ import annotations

import functools
import os

import torch


class AccelError(RuntimeError):
    """An inference option that this device, build or layout cannot honour (one-line message)."""


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_native_bf16() -> bool:
    """True when the CPU computes bf16 GEMMs in hardware (AVX512-BF16 or AMX-BF16); otherwise bf16 is emulated."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_native_fp16() -> bool:
    """True when the CPU computes fp16 GEMMs in hardware (AVX512-FP16 or AMX-FP16)."""
    return bool(cpu_flags() & {"avx512_fp16", "amx_fp16"})


def cpu_int8_dot() -> bool:
    """True when the CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def select_device(requested: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` picks CUDA when present (GPU ``local_rank % count``), else the CPU; ``cuda`` without a GPU is an error."""
    if requested not in ("auto", "cpu", "cuda"):
        raise AccelError(f"inference.device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise AccelError("inference.device=cuda but torch sees no CUDA GPU on this node (use device: cpu or auto)")
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("MPI_LOCALRANKID",
                         os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))))
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def cuda_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device; a CUDA device must carry its index (one GPU per rank, named)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        raise ValueError("a CUDA device must be indexed, e.g. torch.device('cuda:0') for local rank 0 "
                         "(call torch.cuda.set_device(local_rank) and pass that device), not bare 'cuda'")
    return device


def gpu_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device, None for the CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def supports_fp8(device: torch.device) -> bool:
    """fp8 (e4m3) tensor-core GEMMs need compute capability 8.9 or newer (Ada, Hopper: H100/H200)."""
    cap = gpu_capability(device)
    return cap is not None and cap >= (8, 9) and hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (sm_{''.join(map(str, gpu_capability(device)))})"
    isa = [name for name, ok in (("bf16", cpu_native_bf16()), ("fp16", cpu_native_fp16()),
                                 ("int8-dot", cpu_int8_dot())) if ok]
    return f"cpu ({torch.get_num_threads()} threads, native: {', '.join(isa) or 'fp32 only'})"
