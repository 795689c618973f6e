"""Weight quantisation of the MLP linears: int8 (CPU and GPU) and fp8 e4m3 (H100/H200 class GPUs).

int8: weights symmetric per output channel, activations quantised per token at run time
(dynamic), product in int32 through ``torch._int_mm``, dequantised with the outer product of the
two scale vectors. fp8: e4m3 weights and activations with per-tensor scales through
``torch._scaled_mm`` (tensor-core fp8 GEMM). Both keep the original bias in full precision.

Handled module types: ``nn.Linear`` (the serial ``Mlp``, replaced) and the column- and row-parallel
linears of ``DistMlp`` (hpc_fcn/parallel/layers.py), whose inner GEMM is swapped while they keep
their bias and collectives. Any other module with a 2-D weight inside an MLP is refused, so nothing
is silently left unquantised.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import AccelError, supports_fp8

INT8_MAX = 127.0
FP8_MAX = 448.0  # largest finite float8_e4m3fn


class QuantLinear(nn.Module):
    """Common shape of the quantised linears: ``matmul(x)`` is the GEMM without bias, ``forward`` adds it."""
    in_features: int
    out_features: int

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantLinear):
    """Dynamic int8 linear: per-channel int8 weights, per-token int8 activations, int32 accumulation."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / INT8_MAX
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8))
        self.register_buffer("wscale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xf = x.reshape(-1, shape[-1]).float()
        xs = xf.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / INT8_MAX
        xq = torch.round(xf / xs).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        m = xq.shape[0]
        if not int8_gemm_is_exact(xq.device.type):
            raise AccelError("int8 linear: this machine's int8 matrix product is not exact (no int8 dot-product "
                             "instruction for oneDNN); use quantize none")
        if xq.is_cuda and m <= 16:  # cuBLASLt int8 GEMM needs more than 16 rows
            xq = F.pad(xq, (0, 0, 0, 17 - m))
        acc = torch._int_mm(xq, self.qweight.t())[:m]
        y = acc.float() * xs * self.wscale
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class Fp8Linear(QuantLinear):
    """fp8 e4m3 linear on tensor cores: per-tensor weight scale, per-tensor dynamic activation scale."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        if self.in_features % 16 or self.out_features % 16:
            raise AccelError(f"quantize=fp8 needs linear sizes that are multiples of 16, got "
                             f"{self.out_features}x{self.in_features}")
        scale = (w.abs().amax().clamp_min(1e-12) / FP8_MAX).reshape(())
        self.register_buffer("qweight", (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn))
        self.register_buffer("wscale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xs = (x2.abs().amax().float().clamp_min(1e-12) / FP8_MAX).reshape(())
        xq = (x2.float() / xs).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        m = xq.shape[0]
        pad = (-m) % 16
        if pad:
            xq = F.pad(xq.view(torch.int8), (0, 0, 0, pad)).view(torch.float8_e4m3fn)
        y = torch._scaled_mm(xq, self.qweight.t(), scale_a=xs, scale_b=self.wscale, out_dtype=torch.bfloat16)[:m]
        out_dtype = x.dtype if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
        return y.reshape(*shape[:-1], self.out_features).to(out_dtype)


def _parallel_linear_type():
    try:
        from ..parallel.layers import _ParallelLinear
    except ImportError:  # the parallel package is optional for serial use
        return None
    return _ParallelLinear


def _quantized(linear: nn.Linear, mode: str) -> QuantLinear:
    return Int8Linear(linear) if mode == "int8" else Fp8Linear(linear)


@functools.lru_cache(maxsize=None)
def int8_gemm_is_exact(device_type: str = "cpu") -> bool:
    """Whether ``torch._int_mm`` sums int8 products exactly here. On a CPU without an int8 dot-product instruction
    (VNNI, AMX: oneDNN's limit, not /proc/cpuinfo, decides) it pairs products in saturating int16 and is wrong by
    up to 1.5e4 per output for full-range inputs; checked with such inputs against int64 arithmetic."""
    if device_type == "cuda" and not torch.cuda.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (32, 256), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (256, 32), generator=g, dtype=torch.int8)
    a[:, :2], b[:2] = 127, 127  # the products that overflow a pair sum in int16
    want = a.long() @ b.long()
    got = torch._int_mm(a.to(device_type), b.to(device_type)).cpu().long()
    return torch.equal(got, want)


def check_quantize(mode: str, device: torch.device) -> None:
    """Refuse a quantisation mode this device cannot run (or not run exactly)."""
    if mode not in ("none", "int8", "fp8"):
        raise AccelError(f"inference.quantize must be none, int8 or fp8, got {mode!r}")
    if mode == "int8" and not int8_gemm_is_exact(device.type):
        raise AccelError("inference.quantize=int8: this machine's int8 matrix product is not exact (no int8 "
                         "dot-product instruction such as AVX512-VNNI, AVX-VNNI or AMX available to oneDNN: int16 "
                         "pair sums saturate); use quantize none")
    if mode == "fp8" and not supports_fp8(device):
        where = "the CPU" if device.type == "cpu" else f"GPU capability {torch.cuda.get_device_capability(device)}"
        raise AccelError(f"inference.quantize=fp8 needs an fp8 tensor-core GPU (H100/H200, compute capability "
                         f">= 8.9); this run is on {where}: use quantize int8 or none")


def quantize_model(model: nn.Module, mode: str, *, include_head: bool = False) -> list[str]:
    """Replace the MLP linears of every block (and the head if asked) in place; returns the names replaced."""
    if mode == "none":
        return []
    parallel_linear = _parallel_linear_type()
    done: list[str] = []
    for name, mod in list(model.named_modules()):
        if not name.endswith("mlp") or not any(True for _ in mod.children()):
            continue
        for child_name, child in list(mod.named_children()):
            if parallel_linear is not None and isinstance(child, parallel_linear):
                child.use_gemm(_quantized(child, mode))  # the layer keeps its bias and collectives
                done.append(f"{name}.{child_name}")
            elif type(child) is nn.Linear:
                setattr(mod, child_name, _quantized(child, mode))
                done.append(f"{name}.{child_name}")
            elif isinstance(getattr(child, "weight", None), torch.Tensor) and child.weight.dim() == 2 \
                    and not isinstance(child, QuantLinear):
                raise AccelError(f"quantize={mode}: do not know how to quantise {name}.{child_name} "
                                 f"({type(child).__name__}); only nn.Linear and the parallel linears are handled")
    if include_head and type(getattr(model, "head", None)) is nn.Linear:
        model.head = _quantized(model.head, mode)
        done.append("head")
    if not done:
        raise AccelError(f"quantize={mode}: the model has no MLP linears that could be quantised")
    return done
