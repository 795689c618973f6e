"""Hardware as data: peak rates, memory, links, read from a YAML file under perfmodel/hardware/.

A :class:`Hardware` is what the roofline needs: a compute peak per precision, a memory bandwidth,
an FFT rate, a fixed cost per kernel, alpha-beta link parameters per collective, memory capacity
and the runtime's own footprint. ``load_hardware('h100')`` or ``load_hardware('path/to.yaml')``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import math

import yaml

HARDWARE_DIR = Path(__file__).resolve().parent / "hardware"
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")


@dataclass
class Link:
    """Alpha-beta parameters of one collective on one kind of link: t = alpha * steps + bytes / bandwidth."""
    alpha_s: float
    bandwidth_Bps: float


@dataclass
class Hardware:
    name: str
    kind: str  # 'gpu' or 'cpu'
    peak_flops: dict[str, float]  # dense matmul FLOP/s per precision (per device or per rank)
    mem_bandwidth_Bps: float
    mem_capacity_bytes: float
    fft_flops: float = 0.0  # sustained FFT FLOP/s (convention: docs/perfmodel.md); 0 = 20 % of fp32 peak
    vector_flops: float = 0.0  # elementwise FLOP/s; 0 = fp32 peak
    op_overhead_s: float = 5e-6  # fixed cost per kernel / op (launch or dispatcher)
    runtime_bytes: float = 0.0  # memory the runtime holds before any tensor (CUDA context, kernels)
    allocator_overhead: float = 0.0  # fraction of the tensor peak lost to allocator rounding/caching
    devices_per_node: int = 1  # ranks that share one node's fast link
    cores: int = 0  # CPU only: cores per node that ranks share (0 = not shared)
    threads: int = 1  # CPU only: threads per rank the rates were measured with
    gemm_curve: list[list[float]] = field(default_factory=list)  # [FLOPs per call, FLOP/s] (fp32), measured
    intra: dict[str, Link] = field(default_factory=dict)  # collective -> Link inside a node
    inter: dict[str, Link] = field(default_factory=dict)  # collective -> Link between nodes
    # board power per state (W): idle (context held, nothing running), compute (matmul/FFT-bound),
    # memory (bandwidth-bound), comm (collectives, launch gaps); empty = energy is not predicted
    power_watts: dict[str, float] = field(default_factory=dict)
    source: str = ""  # where the numbers come from

    def flops(self, precision: str) -> float:
        """Dense matmul rate at ``precision``, falling back to the closest slower one that exists."""
        order = {"fp8": ("fp8", "bf16", "fp16", "fp32"), "fp16": ("fp16", "bf16", "fp32"),
                 "bf16": ("bf16", "fp16", "fp32"), "tf32": ("tf32", "fp32"), "fp32": ("fp32",)}[precision]
        for p in order:
            if self.peak_flops.get(p):
                return float(self.peak_flops[p])
        raise ValueError(f"hardware {self.name} has no fp32 peak")

    def gemm_rate(self, precision: str, flops_per_call: float) -> float:
        """Matmul rate for one call of this size: the peak scaled by the measured size curve (if any)."""
        peak = self.flops(precision)
        if not self.gemm_curve or flops_per_call <= 0:
            return peak
        pts = sorted(self.gemm_curve)
        best = max(r for _, r in pts)
        x = math.log(flops_per_call)
        if x <= math.log(pts[0][0]):
            r = pts[0][1]
        elif x >= math.log(pts[-1][0]):
            r = pts[-1][1]
        else:
            for (f0, r0), (f1, r1) in zip(pts, pts[1:]):
                if math.log(f0) <= x <= math.log(f1):
                    t = (x - math.log(f0)) / (math.log(f1) - math.log(f0))
                    r = r0 + t * (r1 - r0)
                    break
        return peak * r / best

    @property
    def fft_rate(self) -> float:
        return self.fft_flops or 0.2 * self.flops("fp32")

    @property
    def vector_rate(self) -> float:
        return self.vector_flops or self.flops("fp32")

    def link(self, collective: str, ranks: int) -> Link:
        """The link a collective over ``ranks`` ranks runs on (inter-node once it spans nodes)."""
        table = self.inter if (ranks > self.devices_per_node and self.inter) else self.intra
        if collective in table:
            return table[collective]
        if "default" in table:
            return table["default"]
        raise ValueError(f"hardware {self.name} has no link parameters for {collective}")

    def share(self, ranks_per_node: int) -> float:
        """Fraction of one rank's measured rate it keeps when ``ranks_per_node`` ranks share a CPU."""
        if self.kind != "cpu" or not self.cores:
            return 1.0
        return min(1.0, self.cores / max(1, ranks_per_node * self.threads))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "kind", "peak_flops", "mem_bandwidth_Bps", "mem_capacity_bytes",
                                            "fft_flops", "vector_flops", "op_overhead_s", "runtime_bytes",
                                            "allocator_overhead", "devices_per_node", "cores", "threads", "gemm_curve",
                                            "power_watts", "source")}
        d["intra"] = {k: {"alpha_s": v.alpha_s, "bandwidth_Bps": v.bandwidth_Bps} for k, v in self.intra.items()}
        d["inter"] = {k: {"alpha_s": v.alpha_s, "bandwidth_Bps": v.bandwidth_Bps} for k, v in self.inter.items()}
        return d


def _links(data: dict | None, where: str) -> dict[str, Link]:
    out = {}
    for k, v in (data or {}).items():
        try:
            out[k] = Link(float(v["alpha_s"]), float(v["bandwidth_Bps"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}.{k}: needs numeric alpha_s and bandwidth_Bps ({exc})") from None
    return out


def hardware_from_dict(data: dict, source: str = "") -> Hardware:
    known = set(Hardware.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"hardware {source or data.get('name')}: unknown key '{unknown[0]}'")
    data = dict(data)
    data["intra"] = _links(data.get("intra"), "intra")
    data["inter"] = _links(data.get("inter"), "inter")
    data["peak_flops"] = {k: float(v) for k, v in (data.get("peak_flops") or {}).items()}
    data["power_watts"] = {k: float(v) for k, v in (data.get("power_watts") or {}).items()}
    for k in ("mem_bandwidth_Bps", "mem_capacity_bytes", "fft_flops", "vector_flops", "op_overhead_s",
              "runtime_bytes", "allocator_overhead"):
        if k in data:
            data[k] = float(data[k])
    data.setdefault("source", source)
    return Hardware(**data)


def available() -> list[str]:
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml"))


def load_hardware(name_or_path: str | Path | Hardware) -> Hardware:
    """A built-in hardware by name (``a100``, ``h100``, ``h200``, ``this_machine``) or a YAML path."""
    if isinstance(name_or_path, Hardware):
        return name_or_path
    p = Path(name_or_path)
    if not p.suffix:
        p = HARDWARE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ValueError(f"unknown hardware '{name_or_path}': not a file and not one of {', '.join(available())}")
    return hardware_from_dict(yaml.safe_load(p.read_text()) or {}, str(p))


def save_hardware(hw: Hardware, path: str | Path, comment: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    path.write_text(head + yaml.safe_dump(hw.to_dict(), sort_keys=False))
    return path
