"""Memory footprint per rank: weights, activations (live in inference, saved in training), optimizer state.

The activation terms follow what PyTorch keeps alive for this network (measured op by op with
saved-tensor hooks on CPU; docs/perfmodel.md lists them). Sizes are bytes on the busiest rank.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpc_fcn.parallel.layout import Layout

from .network import ELEM, Net, local_shapes


@dataclass
class Memory:
    weights: float
    activations: float  # inference: peak live set; training: saved for backward + backward transient
    optimizer: float  # Adam moments (training only)
    weight_copies: float  # autocast's low-precision weight copies kept for backward (training + AMP)
    io: float  # input state and prediction buffers of one pass
    runtime: float  # runtime context (CUDA context and libraries), from the hardware file
    allocator: float  # allocator rounding / caching, from the hardware file

    @property
    def tensors(self) -> float:
        return self.weights + self.activations + self.optimizer + self.weight_copies + self.io

    @property
    def total(self) -> float:
        return self.tensors + self.runtime + self.allocator

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("weights", "activations", "optimizer", "weight_copies", "io",
                                              "runtime", "allocator", "tensors", "total")}


def local_parameters(net: Net, lay: Layout) -> tuple[int, int]:
    """(all parameters, parameters of the GEMM weights autocast copies) held by one rank."""
    L = local_shapes(net, lay, 1)
    p1, p2 = net.patch
    kin, n_out = net.in_chans * p1 * p2, net.out_chans * p1 * p2
    blk = 4 * L.Cm + 4 * L.nbm * net.bs * net.bs + 4 * L.nbm * net.bs + 2 * net.C * L.Fm + L.Fm + L.Cm
    total = L.Cm * kin + L.Cm + L.hl * L.wl * L.Cm + net.depth * blk + 2 * net.C + L.Cm * n_out
    gemm = L.Cm * kin + net.depth * 2 * net.C * L.Fm + L.Cm * n_out
    return total, gemm


def footprint(net: Net, lay: Layout, batch: int, precision: str = "fp32", training: bool = False,
              runtime_bytes: float = 0.0, allocator_overhead: float = 0.0) -> Memory:
    """Peak memory of one rank running passes of ``batch`` members (fp32 master weights always)."""
    L = local_shapes(net, lay, batch)
    low = precision in ("bf16", "fp16", "fp8")
    a = ELEM[precision] if low else 4
    f4 = 4
    T, Cm, Fm, C = L.T, L.Cm, L.Fm, net.C
    p1, p2 = net.patch
    n_out = net.out_chans * p1 * p2
    params, gemm_params = local_parameters(net, lay)
    weights = 4.0 * params
    pixels = L.B * L.hl * p1 * L.wl * p2
    io = float(pixels * (net.in_chans + net.out_chans) * f4)
    tok = T * Cm * f4  # one fp32 activation of the residual stream
    spec = L.B * net.H * L.mcols * Cm * 2 * f4  # local spectrum
    pencil = L.B * L.rows_w * net.Wf * Cm * 2 * f4 if lay.h * lay.w > 1 else 0
    K = L.B * net.win_rows * L.win_cols * Cm * f4  # one part of the kept modes
    gathered = T * C * f4 if lay.matmul > 1 else 0
    if not training:
        # block input (kept alive by the skip), x, norm2(x), [its cast], fc1 output, GELU output
        mlp = 3 * tok + gathered + (T * C * a if low else 0) + 2 * T * Fm * a
        filt = 3 * tok + 2 * spec + pencil + 4 * K
        head = tok + 2 * T * n_out * max(a, f4 if lay.matmul > 1 else a)
        return Memory(weights, float(max(mlp, filt, head)), 0.0, 0.0, io, runtime_bytes,
                      allocator_overhead * (weights + max(mlp, filt, head) + io))
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
                  allocator_overhead * (weights * 3 + acts + copies + io))
