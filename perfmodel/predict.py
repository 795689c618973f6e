"""Roofline prediction: time per region = max(FLOPs / peak, bytes / bandwidth) + overheads + alpha-beta comm.

``predict(model_kwargs, layout=..., hardware=...)`` gives a :class:`Prediction` (per-region table, step
time, peak memory per rank, time to solution); ``suggest`` searches the layouts of a rank count.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .hardware import Hardware, load_hardware
from hpc_fcn.model.config import ModelShape
from hpc_fcn.model.facts import (auto_pass_limit, check_code_path, held_bytes, memory_budget, parameter_count,
                                 pass_size)
from hpc_fcn.parallel.layout import Layout, layout_problem

from .memory import Memory, footprint
from .network import Op, backward_ops, forward_ops, sent_bytes

REGION_ORDER = ("patch_embed", "pos_embed", "norm1", "filter", "residual", "norm2", "mlp", "head", "unpatchify",
                "grad_allreduce", "optimizer")


@dataclass
class Region:
    name: str
    flops: float = 0.0
    mm_flops: float = 0.0
    bytes: float = 0.0
    comm_bytes: float = 0.0
    compute_s: float = 0.0  # max(flops / rate, bytes / bandwidth) summed over the region's ops
    flop_s: float = 0.0  # flops / rate alone
    mem_s: float = 0.0  # bytes / bandwidth alone
    overhead_s: float = 0.0
    comm_s: float = 0.0
    calls: int = 0

    @property
    def time_s(self) -> float:
        return self.compute_s + self.overhead_s + self.comm_s

    @property
    def bound(self) -> str:
        parts = {"compute": self.flop_s if self.flop_s >= self.mem_s else 0.0,
                 "memory": self.mem_s if self.mem_s > self.flop_s else 0.0,
                 "comm": self.comm_s, "overhead": self.overhead_s}
        return max(parts, key=parts.get)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else float("inf")

    def as_dict(self) -> dict:
        return {"region": self.name, "flops": self.flops, "mm_flops": self.mm_flops, "bytes": self.bytes,
                "comm_bytes": self.comm_bytes, "time_s": self.time_s, "compute_s": self.compute_s,
                "overhead_s": self.overhead_s, "comm_s": self.comm_s, "bound": self.bound,
                "intensity": self.intensity, "calls": self.calls}


@dataclass
class Prediction:
    layout: dict
    hardware: str
    precision: str
    training: bool
    members: int
    members_per_pass: int
    lead_steps: int
    regions: dict[str, Region]
    memory: Memory
    passes: int  # forward passes per rank per model step
    memory_inference: Memory | None = None
    memory_training: Memory | None = None
    notes: list[str] = field(default_factory=list)
    code_path: str = "fused"  # the inference forward whose memory is predicted (hpc_fcn.model.facts.CODE_PATHS)

    @property
    def step_time_s(self) -> float:
        """One pass of ``members_per_pass`` members through the network (one model step), per rank."""
        return sum(r.time_s for r in self.regions.values())

    @property
    def memory_bytes(self) -> float:
        """Peak memory per rank (tensors + runtime context)."""
        return self.memory.total

    @property
    def time_to_solution_s(self) -> float:
        """All members of this rank, every lead step (training: one step per pass)."""
        return self.passes * self.lead_steps * self.step_time_s

    @property
    def flops(self) -> float:
        return sum(r.flops for r in self.regions.values())

    def table(self) -> list[dict]:
        return [self.regions[k].as_dict() for k in REGION_ORDER if k in self.regions]

    def as_dict(self) -> dict:
        return {"layout": self.layout, "hardware": self.hardware, "precision": self.precision,
                "training": self.training, "members": self.members, "members_per_pass": self.members_per_pass,
                "lead_steps": self.lead_steps, "passes": self.passes, "step_time_s": self.step_time_s,
                "time_to_solution_s": self.time_to_solution_s, "memory_bytes": self.memory_bytes,
                "memory": self.memory.as_dict(), "regions": self.table(), "notes": self.notes,
                "code_path": self.code_path}


def collective_time(hw: Hardware, op: Op, span: int) -> float:
    """Alpha-beta time of one collective; ``comm_bytes`` is what this rank sends (as the tracer records it)."""
    p = op.group
    if p <= 1:
        return 0.0
    link = hw.link(op.collective, span)
    steps = 2 * (p - 1) if op.collective == "all_reduce" else (p - 1)
    return steps * link.alpha_s + op.comm_bytes / link.bandwidth_Bps


def _span(op: Op, lay: Layout) -> int:
    """How many consecutive ranks the collective's group stretches over (matmul is fastest)."""
    if op.group == lay.matmul:
        return lay.matmul
    if op.group == lay.w:
        return lay.w * lay.matmul
    return lay.h * lay.w * lay.matmul


def _accumulate(regions: dict[str, Region], ops: list[Op], hw: Hardware, lay: Layout, share: float) -> None:
    for op in ops:
        r = regions.setdefault(op.region, Region(op.region))
        n = op.count
        bw = hw.mem_bandwidth_Bps * share
        if op.kind == "gemm":
            rate = hw.gemm_rate(op.precision, op.mm_flops / op.meta.get("gemm_calls", 1)) * share
        elif op.kind == "fft":
            rate = hw.fft_rate * share
        else:
            rate = hw.vector_rate * share
        t_f = op.flops / rate if op.flops else 0.0
        t_m = op.bytes / bw if op.bytes else 0.0
        r.flops += n * op.flops
        r.mm_flops += n * op.mm_flops
        r.bytes += n * op.bytes
        r.comm_bytes += n * op.comm_bytes
        r.flop_s += n * t_f
        r.mem_s += n * t_m
        r.compute_s += n * max(t_f, t_m)
        # ranks sharing a CPU's cores (share < 1) share them for everything: the kernels' dispatch, and the copies
        # and waits of a collective through shared memory, as much as the arithmetic
        r.overhead_s += n * op.kernels * hw.op_overhead_s / share
        r.calls += n
        if op.kind == "comm":
            r.comm_s += n * collective_time(hw, op, _span(op, lay)) / share


def _ranks_per_node(hw: Hardware, lay: Layout) -> int:
    return min(lay.ranks, hw.devices_per_node) if hw.kind == "gpu" else lay.ranks


def pass_members(net: ModelShape, lay: Layout, hw: Hardware, members_local: int, members_per_pass: int,
                 precision: str, cuda_graphs: bool = False) -> int:
    """Members per pass as the run steps them (:mod:`hpc_fcn.model.facts`): at most ``members_per_pass``, 0 = as
    many as fit in the memory the hardware leaves after its runtime and the weights; balanced over the passes."""
    limit = members_per_pass
    if not limit:
        gpu = hw.kind == "gpu"
        free = hw.mem_capacity_bytes - hw.runtime_bytes - 4.0 * parameter_count(net, lay)[0]
        limit = auto_pass_limit(net, lay, precision, memory_budget(free, gpu), gpu, cuda_graphs)
    return pass_size(members_local, limit)


def predict(model_kwargs: dict, *, layout=None, hardware="h100", members: int = 1, members_per_pass: int = 1,
            precision: str = "fp32", lead_steps: int = 1, training: bool = False,
            ranks_per_node: int | None = None, cuda_graphs: bool = False, code_path: str | None = None) -> Prediction:
    """Predicted time per step, memory per rank and time to solution for one config and layout.

    ``code_path``: the inference forward whose memory is predicted: ``fused`` (FusedAFNONet), ``eager`` (the
    published AFNONet.forward) or ``distributed``; None: the one the app runs (fused for a serial model,
    distributed when h, w or matmul > 1). The pass size (``members_per_pass`` 0) is the app's rule either way.
    ``members_per_pass``: the most members one rank pushes through the network together (0: as many as fit,
    ``inference.members_per_pass: 0``; ``cuda_graphs`` as the run sets it), its share of ``members`` balanced
    over the fewest passes. ``ranks_per_node``: ranks sharing a CPU node (default: all ranks of the layout).
    """
    hw = load_hardware(hardware)
    lay = Layout.of(layout)
    net = ModelShape.of(model_kwargs)
    problem = layout_problem(lay, net)
    if problem:
        raise ValueError(f"layout {lay.as_dict()}: {problem}")
    if precision not in ("fp32", "tf32", "bf16", "fp16", "fp8"):
        raise ValueError(f"precision must be fp32, tf32, bf16, fp16 or fp8, got {precision!r}")
    code_path = check_code_path(code_path, lay)
    members_local = -(-members // lay.ensemble)
    batch = pass_members(net, lay, hw, members_local, members_per_pass, precision, cuda_graphs)
    passes = -(-members_local // batch)
    share = hw.share(ranks_per_node or _ranks_per_node(hw, lay))
    fwd = forward_ops(net, lay, batch, precision, kept_only=code_path != "eager")
    regions: dict[str, Region] = {}
    _accumulate(regions, fwd, hw, lay, share)
    notes = []
    if training:
        _accumulate(regions, backward_ops(fwd), hw, lay, share)
        params, _ = parameter_count(net, lay)
        opt = Op("optimizer", "adam", "vector", 12.0 * params, bytes=28.0 * params, kernels=12)
        _accumulate(regions, [opt], hw, lay, share)
        grad_ops = []
        if lay.h * lay.w > 1:
            n = 4.0 * params
            grad_ops.append(Op("grad_allreduce", "spatial", "comm",
                               comm_bytes=sent_bytes("all_reduce", n, lay.h * lay.w), collective="all_reduce",
                               group=lay.h * lay.w, bytes=2 * n))
        if lay.ensemble > 1:
            n = 4.0 * params
            grad_ops.append(Op("grad_allreduce", "ensemble", "comm",
                               comm_bytes=sent_bytes("all_reduce", n, lay.ensemble), collective="all_reduce",
                               group=lay.ensemble, bytes=2 * n))
        _accumulate(regions, grad_ops, hw, lay, share)
    mem_kw = dict(runtime_bytes=hw.runtime_bytes, allocator_overhead=hw.allocator_overhead)
    mem_inf = footprint(net, lay, batch, precision, False, code_path=code_path, **mem_kw)
    if members > 1 or lay.ensemble > 1:  # an ensemble run also holds its members' states between passes
        mem_inf.held = float(held_bytes(net, lay, members_local, members, lay.ensemble))
    mem_train = footprint(net, lay, batch, precision, True, **mem_kw)
    mem = mem_train if training else mem_inf
    if mem.total > hw.mem_capacity_bytes:
        notes.append(f"needs {mem.total / 1e9:.1f} GB per rank, more than the {hw.mem_capacity_bytes / 1e9:.0f} GB available")
    return Prediction(lay.as_dict(), hw.name, precision, training, members, batch, lead_steps, regions, mem,
                      passes, mem_inf, mem_train, notes, code_path)


def layouts(ranks: int) -> list[Layout]:
    """Every ensemble x h x w x matmul factorisation of ``ranks``."""
    divs = [d for d in range(1, ranks + 1) if ranks % d == 0]
    out = []
    for e, h, w in itertools.product(divs, divs, divs):
        if ranks % (e * h * w) == 0:
            out.append(Layout(e, h, w, ranks // (e * h * w)))
    return out


def suggest(model_kwargs: dict, *, ranks: int, hardware="h100", members: int = 1, members_per_pass: int = 1,
            precision: str = "fp32", lead_steps: int = 1, training: bool = False,
            cuda_graphs: bool = False) -> tuple[dict, Prediction]:
    """The valid layout of ``ranks`` ranks with the lowest predicted time to solution that fits in memory
    (``members_per_pass`` 0: each layout's own pass size by the run's rule, see :func:`predict`)."""
    hw = load_hardware(hardware)
    net = ModelShape.of(model_kwargs)
    best = None
    reasons = []
    for lay in layouts(ranks):
        problem = layout_problem(lay, net, members)
        if problem:
            reasons.append(problem)
            continue
        pred = predict(model_kwargs, layout=lay, hardware=hw, members=members, members_per_pass=members_per_pass,
                       precision=precision, lead_steps=lead_steps, training=training, cuda_graphs=cuda_graphs)
        if pred.memory_bytes > hw.mem_capacity_bytes:
            reasons.append(f"{lay.as_dict()} needs {pred.memory_bytes / 1e9:.1f} GB per rank")
            continue
        key = (pred.time_to_solution_s, lay.model_ranks)
        if best is None or key < best[0]:
            best = (key, lay, pred)
    if best is None:
        raise ValueError(f"no layout of {ranks} ranks fits: " + "; ".join(reasons[:3]))
    return best[1].as_dict(), best[2]
