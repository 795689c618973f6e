"""Mixed precision: which autocast dtype a precision name means, and whether this device may use it.

The fp32 islands need no code here: the AFNO filter disables autocast and runs its FFTs in fp32,
autocast keeps LayerNorm and reductions in fp32, and the residual stream stays fp32 because an
fp32 tensor plus a low-precision one promotes to fp32. Only GEMM/conv inputs and outputs are cast.
"""
from __future__ import annotations

import contextlib

import torch

from .device import AccelError, cpu_native_bf16, cpu_native_fp16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``precision`` on ``device``; refuses combinations that cannot work here."""
    if precision not in DTYPES:
        raise AccelError(f"inference.precision must be fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise AccelError("inference.precision=bf16 needs a GPU with bf16 support (Ampere or newer); use fp16 or fp32")
    if device.type == "cpu" and precision == "fp16" and not cpu_native_fp16():
        # Measured on an AVX512 Xeon without FP16 units: an fp16 GEMM ran about 20x slower than fp32.
        raise AccelError("inference.precision=fp16 on this CPU is emulated (no AVX512-FP16/AMX-FP16) and much slower "
                         "than fp32; use precision fp32 or bf16 on CPU, fp16 on GPU")
    return DTYPES[precision]


def autocast(device: torch.device, precision: str):
    """An autocast context for ``precision`` (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def precision_note(precision: str, device: torch.device) -> str:
    """A short remark for ``describe()`` when the precision is emulated on this CPU."""
    if device.type == "cpu" and precision == "bf16" and not cpu_native_bf16():
        return " (bf16 emulated: this CPU has no AVX512-BF16/AMX)"
    return ""
