"""Mixed precision: which autocast dtype a precision name means, and whether this device may use it.

The fp32 islands need no code here: the AFNO filter disables autocast and runs its FFTs in fp32,
autocast keeps LayerNorm and reductions in fp32, and the residual stream stays fp32 because an
fp32 tensor plus a low-precision one promotes to fp32. Only GEMM/conv inputs and outputs are cast.

``tf32`` keeps fp32 storage and lets cuBLAS/cuDNN round GEMM and conv inputs to TF32 (10-bit
mantissa) on tensor cores (Ampere and newer). ``fp32`` on a GPU turns TF32 off for the pass (cuDNN
allows it for convolutions by default), so fp32 means fp32.
"""
from __future__ import annotations

import contextlib

import torch

from .device import AccelError, cpu_native_bf16, cpu_native_fp16, gpu_capability

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``precision`` on ``device``; refuses combinations that cannot work here."""
    if precision not in DTYPES:
        raise AccelError(f"inference.precision must be fp32, tf32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise AccelError("inference.precision=bf16 needs a GPU with bf16 support (Ampere or newer); use fp16 or fp32")
    if precision == "tf32":
        if device.type != "cuda":
            raise AccelError("inference.precision=tf32 is a GPU tensor-core mode (Ampere or newer); "
                             "use precision fp32 or bf16 on the CPU")
        if gpu_capability(device) < (8, 0):
            raise AccelError(f"inference.precision=tf32 needs an Ampere or newer GPU (compute capability >= 8.0), "
                             f"this one is {gpu_capability(device)}; use fp32 or fp16")
    if device.type == "cpu" and precision == "fp16" and not cpu_native_fp16():
        # Measured on an AVX512 Xeon without FP16 units: an fp16 GEMM ran about 20x slower than fp32.
        raise AccelError("inference.precision=fp16 on this CPU is emulated (no AVX512-FP16/AMX-FP16) and much slower "
                         "than fp32; use precision fp32 or bf16 on CPU, fp16 on GPU")
    return DTYPES[precision]


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """TF32 for cuBLAS GEMMs and cuDNN convolutions on (tf32) or off (fp32) inside the block, restored after."""
    mm, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (mm.allow_tf32, cudnn.allow_tf32)
    mm.allow_tf32 = cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        mm.allow_tf32, cudnn.allow_tf32 = saved


def autocast(device: torch.device, precision: str):
    """The context a pass runs in: autocast for bf16/fp16; on a GPU, TF32 on for tf32 and off for fp32."""
    if precision in ("fp32", "tf32"):
        return tf32_matmuls(precision == "tf32") if device.type == "cuda" else contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def precision_note(precision: str, device: torch.device) -> str:
    """A short remark for ``describe()`` when the precision is emulated on this CPU."""
    if device.type == "cpu" and precision == "bf16" and not cpu_native_bf16():
        return " (bf16 emulated: this CPU has no AVX512-BF16/AMX)"
    return ""
