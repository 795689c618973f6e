"""Member-steps per second and peak memory of every inference variant, measured side by side.

    python bench/inference.py [CONFIG] [model.embed_dim=256 ...] [--variants eager fused int8 ...]
                              [--members 16] [--reps 5] [--production] [--threads N]

CONFIG is any YAML with ``model:`` (and optionally ``inference:``) sections; other sections are
ignored. Without it the built-in model is used (its checkpoint if present, else random weights of
the same size). Every variant steps the same members once per repetition, variants interleaved, and
the table reports medians as ratios to the baseline: the published forward, eager fp32, one member
per pass. ``--production`` is the 720 x 1440, 20-channel, patch 8, embed 768, depth 12 network.
"""
from __future__ import annotations

import argparse
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
    "cuda_graphs": (dict(cuda_graphs=True), "N"),
    "bf16_graphs": (dict(precision="bf16", cuda_graphs=True), "N"),
    "compile_bf16_graphs": (dict(compile=True, precision="bf16", cuda_graphs=True), "N"),
    "fp8_bf16_graphs": (dict(quantize="fp8", precision="bf16", cuda_graphs=True), "N"),
}


@dataclass
class BenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    channels: int = 5


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
    device = Forecaster.select_device(InferenceConfig(device=a.device))
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
        try:
            v = Variant(n, net, opts, N if mpp == "N" else 1, device)
            t0 = time.perf_counter()
            v.step(x)  # warm-up: compilation, graph capture, allocator
            sync(device)
            v.warmup = time.perf_counter() - t0
            variants.append(v)
        except AccelError as exc:
            print(f"skip {n}: {exc}", file=sys.stderr)
    base_out = variants[0].step(x)
    for v in variants:
        v.err = ((v.step(x) - base_out).norm() / base_out.norm()).item()
    for r in range(a.reps):
        for v in variants:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                sync(device)
                t0 = time.perf_counter()
                v.step(x)
                sync(device)
                v.times.append(time.perf_counter() - t0)
                v.peak = max(v.peak, torch.cuda.max_memory_allocated(device))
            else:
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    v.step(x)
                    v.times.append(time.perf_counter() - t0)
                v.peak = max(v.peak, mem.peak)

    flops = model_flops(net)
    peaks = {}
    print(f"# inference benchmark: {origin}; img {net.img_size}, patch {net.patch_size}, {net.in_chans} ch, "
          f"embed {net.embed_dim}, depth {net.depth}")
    print(f"# device: {describe_device(device)}; torch {torch.__version__}; {N} members per step, N = {N}; "
          f"{a.reps} interleaved repetitions, medians")
    print(f"# model FLOPs per member-step: {flops / 1e9:.3f} GFLOP (perfmodel)")
    base = statistics.median(variants[0].times)
    print()
    print("| variant | members/pass | member-steps/s | x eager fp32 | % of peak | peak mem (MiB) | warm-up s | rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
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
        print(f"| {v.name} | {v.mpp} | {rate:.2f} | {base / med:.2f} | {frac} | {v.peak / 2**20:.0f} | "
              f"{v.warmup:.1f} | {v.err:.1e} |")
    print()
    print(f"# peak FLOP/s from {peaks['fp32'][1]}; '% of peak' uses the variant's precision "
          f"(int8 against the fp32 peak). warm-up = first step (includes torch.compile / graph capture).")
    print("# rel. diff = relative L2 difference of one step from the eager fp32 output.")
    if device.type == "cpu":
        print("# peak mem on CPU = resident-memory growth during the step (memory the allocator already holds "
              "from earlier steps is not counted); on GPU = torch.cuda.max_memory_allocated.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
