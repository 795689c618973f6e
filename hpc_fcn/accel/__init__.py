"""Inference speed-ups: device selection, mixed precision, quantisation, torch.compile, CUDA graphs, batching
(GPU energy through NVML: :mod:`.power`)."""
from .compile import check_compile, compile_dense_submodules, compile_fused
from .device import (AccelError, cpu_int8_dot, cpu_native_bf16, cpu_native_fp16, describe_device, select_device,
                     supports_fp8)
from .fastpath import FusedAFNONet
from .graphs import GraphedStep, check_cuda_graphs
from .memory import auto_members_per_pass, member_bytes, members_that_fit, pass_size
from .precision import DTYPES, autocast, check_precision
from .quantize import Fp8Linear, Int8Linear, QuantLinear, check_quantize, quantize_model

__all__ = ["AccelError", "DTYPES", "Fp8Linear", "FusedAFNONet", "GraphedStep", "Int8Linear", "QuantLinear",
           "auto_members_per_pass", "autocast", "check_compile", "check_cuda_graphs", "check_precision",
           "check_quantize", "compile_dense_submodules", "compile_fused", "cpu_int8_dot", "cpu_native_bf16",
           "cpu_native_fp16", "describe_device", "member_bytes", "members_that_fit", "pass_size", "quantize_model",
           "select_device", "supports_fp8"]
