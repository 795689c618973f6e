"""Memory footprint per rank: weights, activations (live in inference, saved in training), optimizer state.

The activation terms follow what PyTorch keeps alive for this network (measured op by op with
saved-tensor hooks on CPU; docs/perfmodel.md lists them). Sizes are bytes on the busiest rank. The
inference live set per member and the parameter count come from :mod:`hpc_fcn.model.facts`.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpc_fcn.model.config import ModelShape
from hpc_fcn.model.facts import (LOW_PRECISION, act_bytes, check_code_path, local_shapes, member_bytes, parameter_count,
                                 spectral_copy_bytes)
from hpc_fcn.parallel.layout import Layout


@dataclass
class Memory:
    weights: float
    activations: float  # inference: peak live set; training: saved for backward + backward transient
    optimizer: float  # Adam moments (training only)
    weight_copies: float  # autocast's low-precision weight copies kept for backward (training + AMP)
    io: float  # input state and prediction buffers of one pass
    runtime: float  # the process before any tensor (CUDA context and libraries; a CPU's resident set), hardware file
    allocator: float  # allocator rounding / caching, from the hardware file
    code_path: str = "fused"  # the forward whose live set ``activations`` is (hpc_fcn.model.facts.CODE_PATHS)
    held: float = 0.0  # an ensemble run's member states between passes (hpc_fcn.model.facts.held_bytes)

    @property
    def tensors(self) -> float:
        return self.weights + self.activations + self.optimizer + self.weight_copies + self.io + self.held

    @property
    def total(self) -> float:
        return self.tensors + self.runtime + self.allocator

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("weights", "activations", "optimizer", "weight_copies", "io",
                                              "held", "runtime", "allocator", "tensors", "total", "code_path")}


MMAP_CEILING = 32 << 20  # glibc's dynamic mmap threshold never rises above this (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)


def spectrum_in_heap(net: ModelShape, lay: Layout, batch: int) -> bool:
    """Whether a pass's kept Fourier modes (complex fp32, the filter's most frequent intermediate) are allocated in
    glibc's heap, under its mmap ceiling, where freed blocks stay resident: the CPU allocator term applies then.
    Over it they are mapped and returned at once (production at patch 4: the resident set grows by the live set
    alone, to 1 %; at patch 8 by 0.24 of weights, images and live set more; docs/perfmodel.md)."""
    L = local_shapes(net, lay, batch)
    return L.B * L.win_rows * L.win_cols * L.Cm * 8 < MMAP_CEILING


def footprint(net: ModelShape, lay: Layout, batch: int, precision: str = "fp32", training: bool = False,
              runtime_bytes: float = 0.0, allocator_overhead: float = 0.0, code_path: str | None = None) -> Memory:
    """Peak memory of one rank running passes of ``batch`` members (fp32 master weights always).

    Inference on the forward ``code_path`` (None: the one the app runs on ``lay``): the weights (the fused
    forward adds its interleaved spectral copies) and ``batch`` times the per-member bytes
    (:func:`hpc_fcn.model.facts.member_bytes`, the same bytes the ``members_per_pass: 0`` rule budgets);
    training (the distributed/eager autograd graph): what autograd saves, counted here.
    """
    params, gemm_params = parameter_count(net, lay)
    weights = 4.0 * params
    if not training:
        path = check_code_path(code_path, lay)
        weights += spectral_copy_bytes(net, path)
        member = member_bytes(net, lay, precision, path)
        acts, io = float(batch * member.activations), float(batch * member.io)
        retained = allocator_overhead * (weights + acts + io) if spectrum_in_heap(net, lay, batch) else 0.0
        return Memory(weights, acts, 0.0, 0.0, io, runtime_bytes, retained, path)
    L = local_shapes(net, lay, batch)
    low = precision in LOW_PRECISION
    a = act_bytes(precision)
    f4 = 4
    T, Cm, Fm, C = L.T, L.Cm, L.Fm, net.embed_dim
    p1, p2 = net.patch
    pixels = L.B * L.hl * p1 * L.wl * p2
    io = float(pixels * (net.in_chans + net.out_chans) * f4)
    tok = T * Cm * f4  # one fp32 activation of the residual stream
    K = L.B * L.win_rows * L.win_cols * Cm * f4  # one part of the kept modes
    gathered = T * C * f4 if lay.matmul > 1 else 0
    # saved for backward, per block: norm inputs (+ per-token statistics), the filter's input and ten
    # copies of the kept-mode parts (einsum operands, ReLU outputs), the MLP's input, hidden and GELU output
    stats = 2 * T * f4
    mlp_in = T * C * a if low else (gathered or tok)
    per_block = 2 * (tok + stats) + (tok + 10 * K) + mlp_in + 2 * T * Fm * a
    if lay.matmul > 1:
        per_block += 2 * 2 * tok  # sharded LayerNorm keeps the centred input and its square
    image = pixels * net.in_chans * a if low else 0  # fp32: the conv keeps the input buffer itself
    saved = net.depth * per_block + image + T * Cm * a
    transient = T * Fm * a + 2 * tok  # gradients alive while the last MLP back-propagates (its saved inputs are freed as it goes)
    copies = gemm_params * a if low else 0.0
    acts = float(saved + transient)
    return Memory(weights, acts, 2.0 * weights, float(copies), io, runtime_bytes,
                  allocator_overhead * (weights * 3 + acts + copies + io), "eager" if lay.model_ranks == 1 else "distributed")
