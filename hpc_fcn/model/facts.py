"""What one rank holds of the model: local shapes, parameter count, per-member memory and the pass-size rule.

The one place for the facts that the forecaster (at run time, fed with the device's free memory), the
ensemble set-up, the job generator and the performance model (fed with a hardware file's capacity) must
agree on, above all ``inference.members_per_pass: 0`` (as many members per pass as fit). Pure Python,
like :mod:`hpc_fcn.model.config`; a layout is anything with ``h``, ``w`` and ``matmul``
(:class:`hpc_fcn.parallel.layout.Layout`), ``None`` for one rank. Sizes are those of the busiest rank
(balanced splits round up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ModelShape

ELEM = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}  # bytes per element of a GEMM operand
LOW_PRECISION = ("bf16", "fp16", "fp8")  # autocast precisions: GEMM operands and hidden activations cast down

# The "0 = auto" pass-size rule (see auto_pass_limit)
CPU_TOKENS_PER_PASS = 8192  # GEMM throughput saturates at a few thousand token rows; bigger passes only add traffic
CPU_MEMORY_FRACTION = 0.25  # of MemAvailable: leave room for other ranks on the node, IO buffers, the OS
GPU_MEMORY_FRACTION = 0.7  # of free device memory: leave room for the caching allocator and workspaces
MEMBER_MARGIN = 2.0  # on the live set, which counts tensors only: allocator rounding, cuFFT plans, fragmentation
MAX_MEMBERS_PER_PASS = 256


def act_bytes(precision: str) -> int:
    """Bytes of one GEMM operand or hidden activation element in ``precision`` (fp32 and tf32 keep 4)."""
    return ELEM[precision] if precision in LOW_PRECISION else 4


@dataclass(frozen=True)
class Local:
    """Per-rank sizes of a pass of ``B`` members under a layout (the busiest rank)."""
    B: int
    hl: int  # token rows
    wl: int  # token columns
    Cm: int  # embedding channels (split over matmul)
    Fm: int  # MLP hidden channels (split over matmul)
    nbm: int  # AFNO blocks (split over matmul)
    rows_w: int  # token rows after the w-transpose (hl split over w)
    mcols: int  # rfft mode columns this rank holds: all W/2+1 unsplit, its share of the kept ones when split
    win_rows: int  # kept mode rows (every rank holds all rows of its mode columns)
    win_cols: int  # kept mode columns among this rank's

    @property
    def T(self) -> int:
        """Tokens of the pass on this rank."""
        return self.B * self.hl * self.wl


def _axes(lay) -> tuple[int, int, int]:
    return (1, 1, 1) if lay is None else (lay.h, lay.w, lay.matmul)


def local_shapes(shape: ModelShape, lay=None, batch: int = 1) -> Local:
    """The sizes one rank of ``lay`` holds of a pass of ``batch`` members (the pencil FFT's too)."""
    h, w, m = _axes(lay)
    hl, wl = -(-shape.H // h), -(-shape.W // w)
    rows, cols = shape.modes
    kept = min(cols.stop, shape.Wf) - cols.start
    # split: only the kept columns are transposed and split over the h*w ranks (hpc_fcn.parallel.fft, modes=K)
    mcols = shape.Wf if h * w == 1 else -(-kept // (h * w))
    return Local(batch, hl, wl, shape.embed_dim // m, shape.mlp_hidden // m, shape.num_blocks // m,
                 -(-hl // w), mcols, rows.stop - rows.start, min(kept, mcols))


def parameter_count(shape: ModelShape, lay=None) -> tuple[int, int]:
    """(all parameters, parameters of the GEMM weights autocast copies) one rank holds; ``lay=None``: the
    serial model (74,691,840 for the production backbone; the stochastic noise projections not counted)."""
    L = local_shapes(shape, lay)
    C, bs, (p1, p2) = shape.embed_dim, shape.block_size, shape.patch
    kin, n_out = shape.in_chans * p1 * p2, shape.out_chans * p1 * p2
    blk = 4 * L.Cm + 4 * L.nbm * bs * bs + 4 * L.nbm * bs + 2 * C * L.Fm + L.Fm + L.Cm
    total = L.Cm * kin + L.Cm + L.hl * L.wl * L.Cm + shape.depth * blk + 2 * C + L.Cm * n_out
    gemm = L.Cm * kin + shape.depth * 2 * C * L.Fm + L.Cm * n_out
    return total, gemm


CODE_PATHS = ("fused", "eager", "distributed")  # the forwards whose live sets member_bytes knows


def default_code_path(lay=None) -> str:
    """The forward the app runs on a rank of ``lay``: FusedAFNONet for a serial model (hpc_fcn.forecaster), the
    DistributedAFNONet's own forward when the model is split (h, w or matmul > 1)."""
    h, w, m = _axes(lay)
    return "fused" if h * w * m == 1 else "distributed"


def check_code_path(path: str | None, lay=None) -> str:
    """``path`` (None: :func:`default_code_path`), checked against the layout: eager and fused are serial forwards."""
    if path is None:
        return default_code_path(lay)
    if path not in CODE_PATHS:
        raise ValueError(f"code path must be one of {', '.join(CODE_PATHS)}, got {path!r}")
    h, w, m = _axes(lay)
    if path != "distributed" and h * w * m > 1:
        raise ValueError(f"the {path} forward is serial but the layout splits the model (h={h} w={w} matmul={m}): "
                         f"use code path distributed")
    return path


def spectral_copy_bytes(shape: ModelShape, path: str = "fused", dense_max_block: int = 8) -> int:
    """Bytes of the spectral weights FusedAFNONet keeps beside the model's (interleaved re/im, fp32): per block two
    layers of a dense block-diagonal (2C x 2C) matrix when the blocks are at most ``dense_max_block`` wide
    (FusedAFNONet.DENSE_SPECTRAL_MAX_BLOCK), else nb (2bs x 2bs) blocks; 0 for the other paths."""
    if path != "fused":
        return 0
    nb, bs = shape.num_blocks, shape.block_size
    mat = (2 * nb * bs) ** 2 if bs <= dense_max_block else nb * (2 * bs) ** 2
    return shape.depth * 2 * (mat + 2 * nb * bs) * 4


@dataclass(frozen=True)
class MemberBytes:
    """Bytes one member takes on one rank during an inference pass (``torch.no_grad``)."""
    activations: int  # the largest live set of a block or the head
    io: int  # its input and output images
    path: str = "fused"  # the forward whose live set this is (CODE_PATHS)

    @property
    def total(self) -> int:
        return self.activations + self.io


def member_bytes(shape: ModelShape, lay=None, precision: str = "fp32", path: str | None = None) -> MemberBytes:
    """The per-member memory of inference on the forward ``path`` (None: the one the app runs on ``lay``,
    :func:`default_code_path`): the largest live set, and the input and output images.

    eager (the published AFNONet.forward) and distributed (DistributedAFNONet, the same live sets split):
    live at the MLP are the block input (kept by the skip), x, norm2(x), [its cast], fc1's and GELU's output;
    at the filter (eager): 3 token tensors, 4 spectra and 2 parts of the kept modes (distributed: 2 spectra,
    the FFT pencil and 4 parts); at the head: its input and output (eager: then its output and unpatchify's).

    fused (FusedAFNONet, sums and GELU in place): at the MLP the block input, x, norm2(x), fc1's output and
    fc2's; at the inverse FFT the block input, norm1's output, the filter's output, the kept modes (2 parts),
    ifft's output over every row and irfft's zero-padded spectrum; at the embedding the patches and the GEMM's
    output; at the head its input and output. Each equals the profiler's peak on CPU (docs/perfmodel.md);
    linear in the members.
    """
    path = check_code_path(path, lay)
    h, w, m = _axes(lay)
    L = local_shapes(shape, lay)
    low, a, f4 = precision in LOW_PRECISION, act_bytes(precision), 4
    T, Cm, Fm, C = L.T, L.Cm, L.Fm, shape.embed_dim
    p1, p2 = shape.patch
    n_out = shape.out_chans * p1 * p2
    tok = T * Cm * f4  # one fp32 activation of the residual stream
    spec = shape.H * L.mcols * Cm * 2 * f4  # local spectrum
    pencil = L.rows_w * shape.Wf * Cm * 2 * f4 if h * w > 1 else 0
    K = L.win_rows * L.win_cols * Cm * f4  # one part of the kept modes
    gathered = T * C * f4 if m > 1 else 0
    cast = T * C * a if low else 0  # norm2's output cast for fc1
    if path == "fused":
        kept_rows = shape.H * L.win_cols * Cm * 2 * f4  # the kept columns over every row (ifft's output)
        mlp = 4 * tok + cast + T * Fm * a
        filt = 3 * tok + 2 * K + kept_rows + spec
        head = tok + 2 * T * n_out * a
        patches = T * p1 * p2 * shape.in_chans
        embed = patches * (f4 + (a if low else 0)) + T * Cm * a  # the patches (their cast) and the GEMM's output
    elif path == "eager":
        embed = 0  # oneDNN's convolution: its reorders are not counted (the peak only where in_chans >> embed_dim)
        mlp = 3 * tok + cast + 2 * T * Fm * a
        # rfft2's output, the zeroed output spectrum, irfft2's copy of it and its inner transform; o_r and o_i
        filt = 3 * tok + 4 * spec + 2 * K
        head = max(tok + T * n_out * a, 2 * T * n_out * a)  # the features are freed before unpatchify copies
    else:
        embed = 0
        hidden = cast + 2 * T * Fm * a  # fc1's and GELU's output
        mlp = 3 * tok + gathered + hidden
        filt = 3 * tok + 2 * spec + pencil + 4 * K
        head = tok + 2 * T * n_out * max(a, f4 if m > 1 else a)
    io = L.hl * p1 * L.wl * p2 * (shape.in_chans + shape.out_chans) * f4
    return MemberBytes(max(mlp, filt, head, embed), io, path)


HELD_IMAGES = 3  # fp32 images an ensemble rank keeps per member between passes: state, physical units, host copy
RUN_IMAGES = 2  # fp32 images every rank keeps for the whole run: the initial condition (persistence), the climatology (ACC)


def held_bytes(shape: ModelShape, lay, members_here: int, members_total: int, ensemble_ranks: int = 1) -> int:
    """Bytes an ensemble rank of ``lay`` holds between passes: HELD_IMAGES fp32 images of its window for each of
    its ``members_here`` members, RUN_IMAGES for the run, and the block of rows on which it scores every member
    (1 / ensemble_ranks of its window, all ``members_total``); the passes' live set (:func:`member_bytes`) comes
    on top."""
    L = local_shapes(shape, lay)
    p1, p2 = shape.patch
    image = L.hl * p1 * L.wl * p2 * shape.in_chans * 4
    return (HELD_IMAGES * members_here + RUN_IMAGES) * image + members_total * -(-image // ensemble_ranks)


# ---- members_per_pass ----------------------------------------------------------------------------------
def memory_budget(free_bytes: float, gpu: bool) -> int:
    """Bytes the passes of one rank may take of ``free_bytes`` (free device memory, or MemAvailable on a CPU)."""
    return int(free_bytes * (GPU_MEMORY_FRACTION if gpu else CPU_MEMORY_FRACTION))


def budgeted_member_bytes(member: MemberBytes, cuda_graphs: bool = False) -> int:
    """What the rule reserves per member: the live set with its margin; a CUDA graph adds its static input
    and output images (its private pool holds the activations, counted once)."""
    return int(MEMBER_MARGIN * (member.activations + member.io * (2 if cuda_graphs else 1)))


def members_that_fit(budget_bytes: int, per_member_bytes: int, cap: int = MAX_MEMBERS_PER_PASS) -> int:
    """The most members one pass may carry: the budget over the per-member bytes, within [1, cap]."""
    return int(max(1, min(budget_bytes // max(per_member_bytes, 1), cap)))


def auto_pass_limit(shape: ModelShape, lay, precision: str, budget_bytes: int, gpu: bool,
                    cuda_graphs: bool = False) -> int:
    """``members_per_pass: 0``: the most members one pass of a rank of ``lay`` may carry within ``budget_bytes``
    (:func:`memory_budget`), at most MAX_MEMBERS_PER_PASS, and on a CPU at most CPU_TOKENS_PER_PASS tokens."""
    per = budgeted_member_bytes(member_bytes(shape, lay, precision), cuda_graphs)
    cap = MAX_MEMBERS_PER_PASS
    if not gpu:
        cap = min(cap, max(1, math.ceil(CPU_TOKENS_PER_PASS / local_shapes(shape, lay).T)))
    return members_that_fit(budget_bytes, per, cap)


def pass_size(n_members: int, limit: int) -> int:
    """Members per pass for ``n_members`` members when at most ``limit`` fit: the fewest passes, balanced
    (``ceil(n / ceil(n / limit))``), so a padded CUDA-graph pass wastes less than one member per pass."""
    if n_members < 1:
        raise ValueError(f"a step needs at least one member, got {n_members}")
    limit = max(1, min(int(limit), n_members))
    passes = math.ceil(n_members / limit)
    return math.ceil(n_members / passes)


__all__ = ["CODE_PATHS", "ELEM", "LOW_PRECISION", "Local", "MemberBytes", "act_bytes", "auto_pass_limit",
           "budgeted_member_bytes", "check_code_path", "default_code_path", "local_shapes", "member_bytes",
           "members_that_fit", "memory_budget", "parameter_count", "pass_size", "spectral_copy_bytes"]
