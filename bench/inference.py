"""Member-steps per second and peak memory of every inference variant, measured side by side.

    python bench/inference.py [CONFIG] [model.embed_dim=256 ...] [--variants eager fused int8 ...]
                              [--members 16] [--reps 5] [--production] [--threads N] [--json OUT.json]

CONFIG is any YAML with ``model:`` (and optionally ``inference:``) sections; other sections are
ignored. Without it the built-in model is used (its checkpoint if present, else random weights of
the same size). Every variant steps the same members once per repetition, variants interleaved, and
the table reports medians as ratios to the baseline: the published forward, eager fp32, one member
per pass. ``--production`` is the 720 x 1440, 20-channel, patch 8, embed 768, depth 12 network.

Peak memory is each variant's own: on a GPU, what it keeps after warm-up (weight copies, graph pool
and static buffers) plus the most its step allocates on top; on the CPU, resident-memory growth during
a step. On a GPU with NVML each variant also runs alone for ``--energy-seconds`` and reports joules per
member-step from the board's energy counter.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_fcn.accel import AccelError, describe_device  # noqa: E402
from hpc_fcn.config import from_dict, read_yaml  # noqa: E402
from hpc_fcn.forecaster import Forecaster  # noqa: E402
from hpc_fcn.model import AFNONet, load_checkpoint  # noqa: E402
from hpc_fcn.schema import InferenceConfig, ModelConfig  # noqa: E402
from hpc_fcn.setup import rank_device  # noqa: E402

BUILTIN_CKPT = Path(__file__).resolve().parents[1] / "hpc_fcn" / "assets" / "builtin_model.ckpt"
BUILTIN_SIZE = dict(img_size=(64, 128), patch_size=4, embed_dim=128, depth=6)
PRODUCTION = dict(img_size=(720, 1440), patch_size=8, embed_dim=768, depth=12)

# name -> (inference options, members per pass: 1 or "N")
CPU_VARIANTS = {
    "eager": (None, 1),  # the published AFNONet.forward (baseline)
    "eager_batched": (None, "N"),
    "fused": ({}, 1),
    "fused_batched": ({}, "N"),
    "bf16": (dict(precision="bf16"), "N"),
    "int8": (dict(quantize="int8"), "N"),
    "compile": (dict(compile=True), "N"),
    "compile_bf16": (dict(compile=True, precision="bf16"), "N"),
    "compile_int8": (dict(compile=True, quantize="int8"), "N"),
}
GPU_VARIANTS = {
    "fp16": (dict(precision="fp16"), "N"),
    "tf32": (dict(precision="tf32"), "N"),
    "cuda_graphs": (dict(cuda_graphs=True), "N"),
    "tf32_graphs": (dict(precision="tf32", cuda_graphs=True), "N"),
    "bf16_graphs": (dict(precision="bf16", cuda_graphs=True), "N"),
    "compile_bf16_graphs": (dict(compile=True, precision="bf16", cuda_graphs=True), "N"),
    "fp8_bf16_graphs": (dict(quantize="fp8", precision="bf16", cuda_graphs=True), "N"),
}


@dataclass
class BenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    channels: int = 5


class GpuMemory:
    """A variant's own GPU memory: what its construction and warm-up keep, plus its steps' transient peak."""

    def __init__(self, device):
        self.device = device
        self.kept = 0
        self.transient = 0

    def _level(self) -> tuple[int, int]:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # cached blocks of earlier variants are not this one's
        return torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device)

    def begin_build(self):
        self._a0, self._r0 = self._level()

    def end_build(self):
        a1, r1 = self._level()
        self.kept = max(a1 - self._a0, r1 - self._r0, 0)  # reserved covers a CUDA graph's private pool

    def step(self, fn):
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        self.transient = max(self.transient, torch.cuda.max_memory_allocated(self.device) - base)
        return out, dt

    @property
    def peak(self) -> int:
        return self.kept + self.transient


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond by a thread (CPU runs)."""

    def __init__(self):
        self.peak = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.base, self.peak, self._stop = self.rss(), 0, False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, self.rss() - self.base)


def build_model(cfg: BenchConfig, production: bool) -> tuple[AFNONet, str]:
    if production:
        torch.manual_seed(0)
        return AFNONet(in_chans=20, out_chans=20, **PRODUCTION).eval(), "production size, random weights"
    m = cfg.model
    if m.checkpoint == "builtin" or (m.checkpoint is None and BUILTIN_CKPT.is_file() and not cfg._custom):
        return load_checkpoint(BUILTIN_CKPT).eval(), f"built-in model {BUILTIN_CKPT.name}"
    if m.checkpoint:
        return load_checkpoint(m.checkpoint).eval(), m.checkpoint
    torch.manual_seed(m.seed)
    return AFNONet(**m.kwargs(cfg.channels, cfg.channels)).eval(), "random weights"


def model_flops(net: AFNONet) -> float:
    """FLOPs of one member-step, from the performance model (the count does not depend on the hardware)."""
    from perfmodel.predict import predict
    return predict(net.config(), hardware="this_machine", members=1, members_per_pass=1).flops


def hardware_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    try:
        from perfmodel import load_hardware
    except ImportError:
        return None, "perfmodel not available"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        hw = next((n for n in ("h200", "h100", "a100") if n in name), None)
        if hw is None:
            return None, f"no hardware YAML for {name}"
        return load_hardware(hw).flops(precision), hw
    try:
        hw = load_hardware("this_machine")
    except Exception:  # noqa: BLE001
        return None, "this_machine.yaml not calibrated (run: python -m perfmodel calibrate)"
    scale = min(torch.get_num_threads(), hw.cores or 1) / max(hw.threads or 1, 1)
    return hw.flops(precision) * scale, f"this_machine.yaml x{scale:g} threads"


class Variant:
    def __init__(self, name, net, opts, mpp, device):
        self.name, self.opts, self.mpp, self.times = name, opts, mpp, []
        self.peak = 0
        self.error = None
        self.joules_per_member_step = None
        if opts is None:  # published forward, fp32, eager
            self.fc = None
            self.net = net
        else:
            self.fc = Forecaster(net, InferenceConfig(device=device.type, members_per_pass=mpp, **opts))

    def step(self, x):
        if self.fc is not None:
            return self.fc.step(x)
        with torch.inference_mode():
            return torch.cat([self.net(x[i:i + self.mpp]) for i in range(0, x.shape[0], self.mpp)])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", help="YAML with model:/inference: sections")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (model.embed_dim=256, channels=20)")
    ap.add_argument("--variants", nargs="+", help="subset of variants (default: every one this device can run)")
    ap.add_argument("--members", type=int, default=16, help="members per step = members per pass N")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--production", action="store_true", help="production-size network (GPU machines)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--energy-seconds", type=float, default=1.0, help="GPU: seconds per variant for joules (0 = off)")
    ap.add_argument("--json", help="also write the table's rows to this JSON file")
    a = ap.parse_args(argv)
    if a.config and "=" in a.config:
        a.overrides.insert(0, a.config)
        a.config = None
    if a.threads:
        torch.set_num_threads(a.threads)
    data = read_yaml(a.config) if a.config else {}
    data = {k: v for k, v in data.items() if k in ("model", "inference", "channels")}
    data.setdefault("model", {}).update({k: v for k, v in BUILTIN_SIZE.items() if k not in data["model"]})
    cfg = from_dict(BenchConfig, data, a.overrides)
    cfg._custom = bool(a.config or any(o.startswith("model.") for o in a.overrides))
    device = rank_device(a.device)
    net, origin = build_model(cfg, a.production)
    net = net.to(device)
    names = a.variants or list(CPU_VARIANTS) + (list(GPU_VARIANTS) if device.type == "cuda" else [])
    table = {**CPU_VARIANTS, **GPU_VARIANTS}
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(table)}")
    names = ["eager"] + [n for n in names if n != "eager"]  # the baseline of every ratio comes first
    N = a.members
    torch.manual_seed(1)
    x = torch.randn(N, net.in_chans, *net.img_size, device=device)

    variants: list[Variant] = []
    for n in names:
        opts, mpp = table[n]
        gmem = GpuMemory(device) if device.type == "cuda" else None
        try:
            if gmem:
                gmem.begin_build()
            v = Variant(n, net, opts, N if mpp == "N" else 1, device)
            t0 = time.perf_counter()
            v.step(x)  # warm-up: compilation, graph capture, allocator
            sync(device)
            v.warmup = time.perf_counter() - t0
            if gmem:
                gmem.end_build()
            v.gmem = gmem
            variants.append(v)
        except AccelError as exc:
            print(f"skip {n}: {exc}", file=sys.stderr)
    base_out = variants[0].step(x)
    for v in variants:
        v.err = ((v.step(x) - base_out).norm() / base_out.norm()).item()
    for r in range(a.reps):
        for v in variants:
            if device.type == "cuda":
                _, dt = v.gmem.step(lambda: v.step(x))
                v.times.append(dt)
                v.peak = v.gmem.peak
            else:
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    v.step(x)
                    v.times.append(time.perf_counter() - t0)
                v.peak = max(v.peak, mem.peak)

    energy_note = measure_energy(variants, x, device, a.energy_seconds)

    flops = model_flops(net)
    peaks = {}
    print(f"# inference benchmark: {origin}; img {net.img_size}, patch {net.patch_size}, {net.in_chans} ch, "
          f"embed {net.embed_dim}, depth {net.depth}")
    print(f"# device: {describe_device(device)}; torch {torch.__version__}; {N} members per step, N = {N}; "
          f"{a.reps} interleaved repetitions, medians")
    print(f"# model FLOPs per member-step: {flops / 1e9:.3f} GFLOP (perfmodel)")
    base = statistics.median(variants[0].times)
    print()
    print("| variant | members/pass | member-steps/s | x eager fp32 | % of peak | peak mem (MiB) | warm-up s "
          "| rel. diff | J/member-step |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for v in variants:
        med = statistics.median(v.times)
        rate = N / med
        prec = (v.opts or {}).get("precision", "fp32")
        if (v.opts or {}).get("quantize") == "fp8":
            prec = "fp8"
        if prec not in peaks:
            peaks[prec] = hardware_peak(device, prec)
        peak = peaks[prec][0]
        frac = f"{100 * flops * rate / peak:.1f}" if peak else "n/a"
        joules = f"{v.joules_per_member_step:.3f}" if v.joules_per_member_step is not None else "n/a"
        print(f"| {v.name} | {v.mpp} | {rate:.2f} | {base / med:.2f} | {frac} | {v.peak / 2**20:.0f} | "
              f"{v.warmup:.1f} | {v.err:.1e} | {joules} |")
        rows.append(dict(variant=v.name, members=N, members_per_pass=v.mpp, member_steps_per_s=rate,
                         speedup=base / med, percent_of_peak=100 * flops * rate / peak if peak else None,
                         peak_mem_bytes=v.peak, warmup_s=v.warmup, rel_diff=v.err,
                         joules_per_member_step=v.joules_per_member_step))
    print()
    print(f"# peak FLOP/s from {peaks['fp32'][1]}; '% of peak' uses the variant's precision "
          f"(int8 against the fp32 peak). warm-up = first step (includes torch.compile / graph capture).")
    print("# rel. diff = relative L2 difference of one step from the eager fp32 output.")
    if device.type == "cpu":
        print("# peak mem on CPU = resident-memory growth during the step (memory the allocator already holds "
              "from earlier steps is not counted).")
    else:
        print("# peak mem on GPU = the variant's own: memory its build and warm-up keep (weight copies, CUDA-graph "
              "pool) + the most one step allocates on top.")
    print(f"# energy: {energy_note}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(dict(device=describe_device(device), origin=origin, members=N,
                                                gflop_per_member_step=flops / 1e9, rows=rows), indent=1))
    return 0


def measure_energy(variants, x, device, seconds: float) -> str:
    """Joules per member-step of each variant running alone for ``seconds`` (GPU board energy through NVML)."""
    if device.type != "cuda" or seconds <= 0:
        return "not measured (GPU only; --energy-seconds 0 turns it off)"
    from hpc_fcn.accel.power import PowerSampler
    for v in variants:
        sampler = PowerSampler(device, interval_s=0.02)
        if not sampler.available:
            return f"not measured: {sampler.reason}"
        steps = 0
        sampler.start()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds or steps < 2:
            v.step(x)
            steps += 1
            sync(device)
        reading = sampler.stop()
        v.joules_per_member_step = reading.joules / (steps * x.shape[0])
    return f"GPU board through NVML ({reading.source}), each variant alone for >= {seconds:g} s"


if __name__ == "__main__":
    raise SystemExit(main())
