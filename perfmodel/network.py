"""The AFNO network as a list of operations per rank: FLOPs, bytes moved and messages for one forward pass.

Each :class:`Op` belongs to a *region* named like the model's submodules (``patch_embed``, ``norm1``,
``filter``, ``norm2``, ``mlp``, ``head``) or to a region of glue code (``pos_embed``, ``residual``).
The counts follow the code in ``hpc_fcn/model/afnonet.py`` and ``hpc_fcn/parallel/`` op by op; the
conventions (FFT FLOPs, what counts as bytes moved) are in docs/perfmodel.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from hpc_fcn.model.config import ModelShape
from hpc_fcn.model.facts import LOW_PRECISION, act_bytes, local_shapes
from hpc_fcn.parallel.layout import Layout

LN_FLOPS = 8  # per element: mean, centre, square, sum, scale, shift (+ rsqrt per token)
GELU_FLOPS = 8  # per element (erf polynomial)


def _rfft_flops(n: int) -> float:
    """Real-input FFT of length n: 2.5 n log2 n (half a complex transform)."""
    return 2.5 * n * math.log2(n) if n > 1 else 0.0


def _cfft_flops(n: int) -> float:
    """Complex FFT of length n: 5 n log2 n."""
    return 5.0 * n * math.log2(n) if n > 1 else 0.0


def sent_bytes(collective: str, nbytes: float, group: int) -> float:
    """Bytes one rank sends in ``collective`` over ``group`` ranks (ring algorithms), as the tracer records them.

    ``nbytes``: the rank's whole buffer (all_to_all, reduce_scatter, all_reduce) or its own piece (all_gather).
    """
    if collective == "all_gather":
        return nbytes * (group - 1)
    if collective == "all_reduce":
        return 2 * nbytes * (group - 1) / group
    return nbytes * (group - 1) / group


@dataclass
class Op:
    """One operation of one forward pass on one rank (``count`` times, e.g. once per block)."""
    region: str
    name: str
    kind: str  # gemm | fft | vector | comm
    flops: float = 0.0
    mm_flops: float = 0.0  # the part torch's FlopCounterMode counts (conv, mm, bmm)
    bytes: float = 0.0  # memory traffic (reads + writes)
    comm_bytes: float = 0.0  # bytes this rank sends
    collective: str = ""  # all_to_all | all_gather | reduce_scatter | all_reduce
    group: int = 1  # ranks in the collective
    precision: str = "fp32"
    kernels: int = 1
    count: int = 1
    meta: dict = field(default_factory=dict)


def forward_ops(net: ModelShape, lay: Layout, batch: int, precision: str = "fp32", kept_only: bool = True) -> list[Op]:
    """Operations of one forward pass of ``batch`` members on the busiest rank of ``lay``. ``kept_only``: the filter
    transforms along the rows, and transposes, only the kept mode columns (the fused and distributed paths); the
    published eager forward (False) transforms every rfft column."""
    L = local_shapes(net, lay, batch)
    low = precision in LOW_PRECISION
    a = act_bytes(precision)  # GEMM operand size under autocast
    f4 = 4
    T, Cm, Fm, C = L.T, L.Cm, L.Fm, net.embed_dim
    p1, p2 = net.patch
    m, P = lay.matmul, lay.h * lay.w
    D = net.depth
    ops: list[Op] = []

    # patch embedding: Conv2d(k = stride = patch) on the local pixels, C/m output channels
    kin = net.in_chans * p1 * p2
    img_in = L.B * net.in_chans * L.hl * p1 * L.wl * p2
    ops.append(Op("patch_embed", "conv", "gemm", 2.0 * T * Cm * kin, 2.0 * T * Cm * kin,
                  bytes=img_in * (f4 + (2 * a if low else 0)) + Cm * kin * a + T * Cm * a, precision=precision,
                  kernels=3 if low else 2))
    ops.append(Op("pos_embed", "add", "vector", T * Cm, bytes=T * Cm * (a + 2 * f4)))

    # per block -----------------------------------------------------------------------------
    for norm in ("norm1", "norm2"):
        if m == 1:
            ops.append(Op(norm, "layer_norm", "vector", LN_FLOPS * T * Cm, bytes=2 * T * Cm * f4, count=D))
        else:  # per-shard mean and M2, all-gathered statistics, normalise (hpc_fcn/parallel/layers.py)
            ops.append(Op(norm, "layer_norm_stats", "vector", LN_FLOPS * T * Cm + 12 * T * m,
                          bytes=7 * T * Cm * f4, kernels=14, count=D))
            ops.append(Op(norm, "stats_all_gather", "comm", comm_bytes=sent_bytes("all_gather", 2 * T * f4, m),
                          collective="all_gather", group=m, count=D))

    # AFNO filter (fp32): distributed rfft2, block-diagonal complex MLP on the kept modes, irfft2
    real_tile = L.B * L.hl * L.wl * Cm * f4
    mcols = L.win_cols if kept_only else L.mcols  # rfft columns this rank transforms along the rows
    fft_flops_fwd = L.B * L.rows_w * Cm * _rfft_flops(net.W) + L.B * mcols * Cm * _cfft_flops(net.H)
    spec_bytes = L.B * net.H * mcols * Cm * 2 * f4  # local spectrum (complex64)
    pencil_bytes = L.B * L.rows_w * mcols * P * Cm * 2 * f4  # the columns transposed over the h x w ranks
    for direction in ("fwd", "inv"):
        if lay.w > 1:
            ops.append(Op("filter", f"transpose_w_{direction}", "comm", bytes=4 * real_tile,
                          comm_bytes=sent_bytes("all_to_all", real_tile, lay.w), collective="all_to_all", group=lay.w,
                          kernels=3, count=D))
        if P > 1:
            ops.append(Op("filter", f"transpose_spatial_{direction}", "comm", bytes=4 * pencil_bytes,
                          comm_bytes=sent_bytes("all_to_all", pencil_bytes, P), collective="all_to_all", group=P,
                          kernels=3, count=D))
        real_pencil = L.B * L.rows_w * net.W * Cm * f4
        ops.append(Op("filter", f"fft_{direction}", "fft", fft_flops_fwd,
                      bytes=2 * (real_pencil + pencil_bytes) + 2 * spec_bytes if P > 1 else
                      2 * (real_pencil + 2 * spec_bytes), kernels=2 if P > 1 else 1, count=D))
    Tw = L.B * L.win_rows * L.win_cols  # kept modes on this rank
    K = Tw * Cm * f4  # one real (or imaginary) part of the kept modes
    mm = 8 * 2.0 * Tw * L.nbm * net.block_size * net.block_size
    spectral = "tf32" if precision == "tf32" else "fp32"  # autocast leaves the filter fp32; TF32 applies to it
    ops.append(Op("filter", "spectral_mlp", "gemm", mm + 14 * Tw * Cm, mm, precision=spectral,
                  bytes=72 * K + spec_bytes, kernels=40, count=D, meta={"gemm_calls": 8}))
    ops.append(Op("filter", "add_input", "vector", T * Cm, bytes=3 * T * Cm * f4, count=D))
    ops.append(Op("residual", "add", "vector", 2 * T * Cm, bytes=6 * T * Cm * f4, kernels=2, count=D))

    # MLP: all-gather channels, fc1 (hidden/m), GELU, fc2 (row-parallel), reduce-scatter, bias
    if m > 1:
        ops.append(Op("mlp", "all_gather", "comm", comm_bytes=sent_bytes("all_gather", T * Cm * f4, m),
                      collective="all_gather", group=m, bytes=2 * T * C * f4, count=D))
    fc = 2.0 * T * C * Fm
    ops.append(Op("mlp", "fc1", "gemm", fc, fc, precision=precision, count=D, kernels=2 if low else 1,
                  bytes=T * C * (a + (f4 + a if low else 0)) + C * Fm * a + T * Fm * a))
    ops.append(Op("mlp", "gelu", "vector", GELU_FLOPS * T * Fm, bytes=2 * T * Fm * a, count=D))
    ops.append(Op("mlp", "fc2", "gemm", fc, fc, precision=precision, count=D,
                  bytes=T * Fm * a + C * Fm * a + T * C * a))
    if m > 1:
        ops.append(Op("mlp", "reduce_scatter", "comm", comm_bytes=sent_bytes("reduce_scatter", T * C * f4, m),
                      collective="reduce_scatter", group=m, bytes=2 * T * C * f4, count=D))
        ops.append(Op("mlp", "bias", "vector", T * Cm, bytes=3 * T * Cm * f4, count=D))

    # head (row-parallel over matmul, all-reduced) and un-patchify
    n_out = net.out_chans * p1 * p2
    hf = 2.0 * T * Cm * n_out
    ops.append(Op("head", "linear", "gemm", hf, hf, precision=precision, kernels=2 if low else 1,
                  bytes=T * Cm * (a + (f4 + a if low else 0)) + Cm * n_out * a + T * n_out * a))
    if m > 1:
        ops.append(Op("head", "all_reduce", "comm", comm_bytes=sent_bytes("all_reduce", T * n_out * f4, m),
                      collective="all_reduce", group=m, bytes=2 * T * n_out * f4))
    ops.append(Op("unpatchify", "permute", "vector", 0, bytes=2 * T * n_out * a))
    return ops


def backward_ops(fwd: list[Op]) -> list[Op]:
    """Backward pass: GEMMs twice (input and weight gradients), FFTs and collectives once, vectors twice."""
    out = []
    for op in fwd:
        scale = {"gemm": 2.0, "fft": 1.0, "vector": 2.0, "comm": 1.0}[op.kind]
        out.append(Op(op.region, op.name + "_bwd", op.kind, op.flops * scale, op.mm_flops * scale,
                      op.bytes * scale, op.comm_bytes, op.collective, op.group, op.precision,
                      int(op.kernels * scale), op.count))
    return out
