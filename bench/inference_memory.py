"""Peak inference memory of one member on the CPU, measured against the performance model, per code path.

    python bench/inference_memory.py [--patches 8 4] [--paths eager fused] [--threads 2] [--smoke] [--json OUT]

Each case (code path x patch size) runs in its own process: build the network (random weights), the input,
then one forward pass of one member under ``torch.no_grad`` with ``--threads`` torch threads. The paths:
``eager`` is the published ``AFNONet.forward``, ``fused`` is :class:`hpc_fcn.accel.FusedAFNONet` (what the
forecaster runs for a serial model). Measured per case:

- RSS peak: the process's resident-set high-water mark during the first forward (:mod:`hpc_fcn.memwatch`, reset
  just before it), absolute, and its increase over the resident set before it (weights and input exist),
- tensor peak: the most bytes of tensors allocated during a second forward, under the torch profiler (its memory
  events; not in the first, whose RSS the profiler's own buffers would inflate by ~0.1 GB),

beside ``perfmodel.predict(..., code_path=path)`` on this machine's hardware file: activations (the live set,
compared with the tensor peak) and the total (runtime + weights + input/output + activations + allocator,
compared with the RSS peak). ``--smoke``: a 32 x 64 grid, patch 4, embed 64, depth 2 (seconds; the tests).
The production network (720 x 1440, 20 channels, embed 768, depth 12) is the default.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRODUCTION = dict(img_size=(720, 1440), in_chans=20, out_chans=20, embed_dim=768, depth=12)
SMOKE = dict(img_size=(32, 64), in_chans=4, out_chans=4, embed_dim=64, depth=2)


def tensor_peak(prof, where: Path) -> int:
    """The most bytes allocated at once since profiling began (the profiler's ``Total Allocated``)."""
    prof.export_chrome_trace(str(where))
    events = json.loads(where.read_text())["traceEvents"]
    where.unlink()
    return max([ev["args"]["Total Allocated"] for ev in events if ev.get("name") == "[memory]"] or [0])


def worker(path: str, kw: dict, threads: int, out: Path, profile_tensors: bool = True) -> None:
    """One case in this process: the RSS after imports, the RSS peak of a first forward, then (``profile_tensors``)
    a profiled forward's tensor peak; writes JSON to ``out``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from hpc_fcn import memwatch
    from hpc_fcn.accel import FusedAFNONet
    from hpc_fcn.model import AFNONet
    torch.set_num_threads(threads)
    runtime = memwatch.current_rss()  # python + torch + hpc_fcn imported, no tensor yet
    torch.manual_seed(0)
    net = AFNONet(**kw).eval()
    run = FusedAFNONet(net) if path == "fused" else net
    weights = sum(t.numel() * t.element_size() for t in list(run.parameters()) + list(run.buffers()))
    x = torch.randn(1, kw["in_chans"], *kw["img_size"])
    before = memwatch.current_rss()
    memwatch.reset_peak()
    t0 = time.perf_counter()
    with torch.no_grad():  # the first forward, as a run makes it, without the profiler (its own buffers take RSS)
        y = run(x)
    seconds = time.perf_counter() - t0
    peak = memwatch.peak_rss()
    io = x.numel() * x.element_size() + y.numel() * y.element_size()
    del y
    tensors = None
    if profile_tensors:  # a second forward for the tensor peak
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run(x)
        tensors = tensor_peak(prof, out.with_suffix(".trace.json"))
    out.write_text(json.dumps(dict(runtime_rss=runtime, weights=weights, io=io, rss_before=before, rss_peak=peak,
                                   tensor_peak=tensors, seconds=seconds)))


def run_case(path: str, kw: dict, threads: int, timeout: float, profile_tensors: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "case.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        cmd = [sys.executable, __file__, "--worker", path, "--json", str(out), "--kw", json.dumps(kw),
               "--threads", str(threads)] + ([] if profile_tensors else ["--no-tensor-peak"])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def predicted(path: str, kw: dict, hardware: str) -> dict:
    from perfmodel import predict
    return predict(kw, layout=None, hardware=hardware, code_path=path).memory.as_dict()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--paths", nargs="+", default=["eager", "fused"], choices=["eager", "fused"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each case's process")
    ap.add_argument("--hardware", default="this_machine", help="the hardware file the prediction uses")
    ap.add_argument("--smoke", action="store_true", help="a 32 x 64 grid, embed 64, depth 2, patch 4 (tests)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    ap.add_argument("--json", help="also write the cases here: {cases: [{path, patch, tokens, measured_bytes (RSS "
                                   "peak), predicted_bytes (total), error (fraction), ...}]}")
    ap.add_argument("--no-tensor-peak", action="store_true",
                    help="skip the profiled second forward (half the time; tensor peak not measured)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--kw", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        kw = json.loads(a.kw)
        kw["img_size"] = tuple(kw["img_size"])
        worker(a.worker, kw, a.threads, Path(a.json), not a.no_tensor_peak)
        return 0
    base, patches = (SMOKE, [4]) if a.smoke else (PRODUCTION, a.patches)
    rows = []
    MB = 1e6
    print(f"one member, torch.no_grad, {a.threads} thread(s), img {base['img_size'][0]} x {base['img_size'][1]}, "
          f"{base['in_chans']} channels, embed {base['embed_dim']}, depth {base['depth']}; predicted by perfmodel "
          f"with hardware {a.hardware}")
    print("| path | patch | tokens | tensor peak MB | predicted activations MB | error | RSS peak MB | RSS increase MB "
          "| predicted total MB | error | forward s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for patch in patches:
        for path in a.paths:
            kw = dict(base, patch_size=patch)
            m = run_case(path, kw, a.threads, a.timeout, not a.no_tensor_peak)
            p = predicted(path, kw, a.hardware)
            tokens = (kw["img_size"][0] // patch) * (kw["img_size"][1] // patch)
            t = m["tensor_peak"]
            e_t = 100 * (p["activations"] - t) / t if t else float("nan")
            e_r = 100 * (p["total"] - m["rss_peak"]) / m["rss_peak"]
            rows.append(dict(path=path, patch=patch, tokens=tokens, measured_bytes=m["rss_peak"],
                             predicted_bytes=p["total"], error=e_r / 100, tensor_peak_bytes=t,
                             predicted_activations_bytes=p["activations"], tensor_error=e_t / 100, measured=m,
                             predicted=p))
            print(f"| {path} | {patch} | {tokens} | {(t or float('nan')) / MB:.1f} | {p['activations'] / MB:.1f} | "
                  f"{e_t:+.1f}% | {m['rss_peak'] / MB:.1f} | {(m['rss_peak'] - m['rss_before']) / MB:.1f} | "
                  f"{p['total'] / MB:.1f} | {e_r:+.1f}% | {m['seconds']:.1f} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"cases": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
