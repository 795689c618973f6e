"""Measure this machine: GEMM rate per precision, memory bandwidth, FFT rate, per-op overhead, and the
alpha-beta parameters of MPI all-to-all / all-gather / all-reduce (sub-runs on 2 and 4 ranks).

Rates are per rank with ``threads`` torch threads (1 matches ``mpirun`` with OMP_NUM_THREADS=1).
Every figure is the median of repeated timings of this thread's CPU time (``time.thread_time``), so
other jobs sharing the cores do not inflate it; traced runs compared against it should use the same
clock (``Tracer(clock=time.thread_time)``, as bench/perfmodel_validation.py does).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .hardware import Hardware, Link, save_hardware


CLOCK = time.thread_time  # CPU time of this thread: other jobs sharing the cores do not inflate it


REPEAT, MIN_TIME = 7, 0.05  # samples per figure, seconds per sample (quick_compute lowers both)


def _median_time(fn, repeat: int | None = None, min_time: float | None = None) -> float:
    repeat, min_time = repeat or REPEAT, min_time or MIN_TIME
    fn()
    n = 1
    while True:  # grow the inner loop until one sample takes min_time
        t = CLOCK()
        for _ in range(n):
            fn()
        dt = CLOCK() - t
        if dt >= min_time or n >= 1 << 16:
            break
        n *= 2
    samples = []
    for _ in range(repeat):
        t = CLOCK()
        for _ in range(n):
            fn()
        samples.append((CLOCK() - t) / n)
    return statistics.median(samples)


def gemm_rate(dtype: torch.dtype) -> float:
    """FLOP/s of matmuls shaped like the model's (tokens x channels times channels x hidden)."""
    rates = []
    for m, k, n in ((2048, 256, 1024), (2048, 1024, 256), (4096, 96, 96)):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        rates.append(2.0 * m * k * n / _median_time(lambda: torch.mm(a, b)))
    return statistics.median(rates)


CURVE_SHAPES = ((256, 32, 32), (2048, 16, 16), (2048, 48, 48), (512, 128, 512), (1024, 256, 1024),
                (2048, 256, 1024), (4096, 384, 1536))


def gemm_curve() -> list[list[float]]:
    """fp32 matmul rate against the FLOPs of one call (small calls pay packing and loop overheads)."""
    out = []
    for m, k, n in CURVE_SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        f = 2.0 * m * k * n
        out.append([f, f / _median_time(lambda: torch.mm(a, b))])
    return sorted(out)


def bf16_supported() -> bool:
    try:
        a = torch.randn(64, 64).bfloat16()
        return bool(torch.isfinite(a @ a).all())
    except Exception:  # noqa: BLE001
        return False


def memory_bandwidth() -> float:
    """Bytes/s of a streaming add (two reads, one write) on arrays far larger than the caches."""
    n = 16 * 1024 * 1024
    a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
    return 3 * 4 * n / _median_time(lambda: torch.add(a, b, out=c))


def fft_rate() -> float:
    """FLOP/s of rfft2 over the token grid of a channels-last field (2.5 N log2 N real, 5 N log2 N complex)."""
    rates = []
    for B, H, W, C in ((1, 32, 64, 256), (1, 64, 128, 64)):
        x = torch.randn(B, H, W, C)
        flops = B * C * (H * 2.5 * W * math.log2(W) + (W // 2 + 1) * 5 * H * math.log2(H))
        rates.append(flops / _median_time(lambda: torch.fft.rfft2(x, dim=(1, 2), norm="ortho")))
    return statistics.median(rates)


def vector_rate() -> float:
    """FLOP/s of the elementwise ops by this model's convention (8 FLOPs per element of GELU and LayerNorm)."""
    x = torch.randn(4096, 256)
    gelu = 8 * x.numel() / _median_time(lambda: torch.nn.functional.gelu(x))
    norm = 8 * x.numel() / _median_time(lambda: torch.nn.functional.layer_norm(x, (256,)))
    return min(gelu, norm)


def op_overhead() -> float:
    """Seconds per small op (dispatch, allocation), the mix of adds, einsums and norms the filter issues."""
    x = torch.randn(2, 4, 8)
    w = torch.randn(4, 8, 8)
    ops = [lambda: x + 1.0, lambda: torch.einsum("...bi,bio->...bo", x, w), lambda: torch.relu(x),
           lambda: torch.nn.functional.layer_norm(x, (8,)), lambda: x.reshape(8, 8).contiguous()]
    return statistics.median(_median_time(f) for f in ops)


def _mem_total() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8e9


# Resident bytes glibc keeps beyond the tensors of an inference process, as a fraction of its weights, images and
# live set: freed chunks under the dynamic mmap threshold (up to 32 MB) stay in the heap, so the resident set grows
# block by block past the live set. Measured by bench/inference_memory.py at 720 x 1440, patch 8, depth 12, without
# the profiler (eager 0.237, fused 0.246; docs/perfmodel.md); MALLOC_MMAP_THRESHOLD_ fixed at 1 MB removes it (then
# the RSS is the tensors to ~20 MB, and a forward is 9-11 % slower). At patch 4 the RSS grows by the live set alone.
CPU_ALLOCATOR_OVERHEAD = 0.24

# what an inference process holds before its first tensor: the interpreter, torch and the inference stack imported
_RUNTIME_SNIPPET = "import torch, hpc_fcn.model, hpc_fcn.accel; from hpc_fcn.memwatch import current_rss; print(current_rss())"


def runtime_rss(threads: int = 1) -> float:
    """Resident bytes of a fresh Python process that imported torch and hpc_fcn's model and accelerators, no tensor
    yet: the CPU's ``runtime_bytes`` (the median of three processes)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    out = [int(subprocess.run([sys.executable, "-c", _RUNTIME_SNIPPET], capture_output=True, text=True, env=env,
                              check=True, timeout=300).stdout.split()[-1]) for _ in range(3)]
    return float(statistics.median(out))


_MPI_SNIPPET = r"""
import json, sys, time, statistics, torch
torch.set_num_threads(1)
from mpi4py import MPI
from hpc_fcn.parallel.comm import make_communicator
from perfmodel.network import sent_bytes
comm = make_communicator("mpi", MPI.COMM_WORLD, "world")
p = comm.size
out = {}
for kind in ("all_to_all", "all_gather", "all_reduce"):
    rows = []
    for n in (256, 4096, 65536, 524288, 2097152):  # floats per rank
        x = torch.randn(p * max(1, n // p))
        def run():
            if kind == "all_to_all":
                comm.all_to_all(x.reshape(p, -1), 0, 1, [1] * p, [x.numel() // p] * p)
            elif kind == "all_gather":
                comm.all_gather(x, 0)
            else:
                comm.all_reduce(x)
        for _ in range(3):
            run()
        samples = []
        reps = max(3, min(200, 2_000_000 // max(n, 1)))
        for _ in range(7):
            comm.barrier()
            t = time.thread_time()
            for _ in range(reps):
                run()
            samples.append((time.thread_time() - t) / reps)
        nb = x.numel() * 4
        sent = sent_bytes(kind, nb, p)
        t = comm.all_reduce(statistics.median(samples), op="max")
        rows.append([sent, t])
    out[kind] = rows
if comm.rank == 0:
    json.dump(out, open(sys.argv[1], "w"))
"""


def mpirun_command() -> list[str]:
    """``$HPC_FCN_MPIRUN`` if set, else the checkout's tools/mpirun.sh when this runs from one (it adds the
    flags a small shared machine needs), else ``mpirun`` on PATH."""
    if os.environ.get("HPC_FCN_MPIRUN"):
        return os.environ["HPC_FCN_MPIRUN"].split()
    script = Path(__file__).resolve().parent.parent / "tools" / "mpirun.sh"
    if script.is_file():
        return [str(script)]
    found = shutil.which("mpirun")
    if found is None:
        raise RuntimeError("perfmodel calibrate needs mpirun: put it on PATH or set HPC_FCN_MPIRUN")
    return [found]


def mpi_measure(ranks: int, timeout: int = 600) -> dict:
    """Timings (bytes sent per rank, seconds) per collective on ``ranks`` ranks (see :func:`mpirun_command`)."""
    import hpc_fcn
    with tempfile.TemporaryDirectory() as d:
        script, out = Path(d) / "mpi_bench.py", Path(d) / "out.json"
        script.write_text(_MPI_SNIPPET)
        home = str(Path(hpc_fcn.__file__).resolve().parent.parent)  # where hpc_fcn is importable from
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=home + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run(["timeout", str(timeout), *mpirun_command(), "-n", str(ranks), sys.executable,
                        str(script), str(out)], check=True, env=env, capture_output=True)
        return json.loads(out.read_text())


def fit_alpha_beta(rows_by_ranks: dict[int, list], collective: str) -> Link:
    """Least-squares fit of t = steps(p) * alpha + bytes / bandwidth over every size and rank count."""
    xs, ys = [], []
    for p, rows in rows_by_ranks.items():
        steps = 2 * (p - 1) if collective == "all_reduce" else (p - 1)
        for sent, t in rows:
            xs.append((steps, sent))
            ys.append(t)
    # relative least squares (each point weighted by 1/t) so small messages count
    a11 = sum((s / y) ** 2 for (s, _), y in zip(xs, ys))
    a12 = sum((s / y) * (b / y) for (s, b), y in zip(xs, ys))
    a22 = sum((b / y) ** 2 for (_, b), y in zip(xs, ys))
    r1 = sum(s / y for (s, _), y in zip(xs, ys))
    r2 = sum(b / y for (_, b), y in zip(xs, ys))
    det = a11 * a22 - a12 * a12
    alpha = (r1 * a22 - r2 * a12) / det
    inv_bw = (a11 * r2 - a12 * r1) / det
    return Link(max(alpha, 1e-7), 1.0 / max(inv_bw, 1e-12))


def calibrate(threads: int = 1, mpi_ranks=(2, 4), log=print, keep_links_from=None) -> Hardware:
    torch.set_num_threads(threads)
    log(f"calibrating with {threads} torch thread(s) per rank")
    peak = {"fp32": gemm_rate(torch.float32)}
    log(f"  GEMM fp32: {peak['fp32'] / 1e9:.1f} GFLOP/s")
    if bf16_supported():
        peak["bf16"] = gemm_rate(torch.bfloat16)
        log(f"  GEMM bf16: {peak['bf16'] / 1e9:.1f} GFLOP/s")
    curve = gemm_curve()
    log("  GEMM fp32 by size: " + ", ".join(f"{f / 1e6:.1f} MFLOP {r / 1e9:.0f}" for f, r in curve))
    bw = memory_bandwidth()
    log(f"  memory bandwidth: {bw / 1e9:.2f} GB/s")
    fft = fft_rate()
    log(f"  FFT: {fft / 1e9:.2f} GFLOP/s")
    ovh = op_overhead()
    log(f"  per-op overhead: {ovh * 1e6:.1f} us")
    vec = vector_rate()
    log(f"  elementwise: {vec / 1e9:.2f} GFLOP/s")
    runtime = runtime_rss(threads)
    log(f"  runtime (resident set of a process with torch and hpc_fcn imported): {runtime / 1e6:.0f} MB")
    links = {}
    if not mpi_ranks and keep_links_from is not None and Path(keep_links_from).is_file():
        from .hardware import load_hardware
        links = load_hardware(keep_links_from).intra
        log(f"  MPI links kept from {keep_links_from}")
    if mpi_ranks:
        measured = {p: mpi_measure(p) for p in mpi_ranks}
        for coll in ("all_to_all", "all_gather", "all_reduce"):
            links[coll] = fit_alpha_beta({p: m[coll] for p, m in measured.items()}, coll)
            log(f"  MPI {coll}: alpha {links[coll].alpha_s * 1e6:.1f} us, bandwidth {links[coll].bandwidth_Bps / 1e9:.2f} GB/s")
        links["reduce_scatter"] = links["all_gather"]
        links["default"] = links["all_to_all"]
    return Hardware(name="this_machine", kind="cpu", peak_flops=peak, mem_bandwidth_Bps=bw,
                    mem_capacity_bytes=_mem_total(), fft_flops=fft, vector_flops=vec, op_overhead_s=ovh,
                    runtime_bytes=runtime, allocator_overhead=CPU_ALLOCATOR_OVERHEAD, devices_per_node=1 << 16, cores=os.cpu_count() or 1,
                    threads=threads, gemm_curve=curve, intra=links, inter={},
                    source=f"python -m perfmodel calibrate (threads={threads}, MPI ranks {list(mpi_ranks)}), "
                           f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}")


def quick_compute(base: Hardware) -> Hardware:
    """Re-measure the compute side (GEMM, curve, bandwidth, FFT, elementwise, overhead) in a few
    seconds and keep ``base``'s links: for runs on a machine whose speed drifts with other jobs."""
    global REPEAT, MIN_TIME
    saved = REPEAT, MIN_TIME
    REPEAT, MIN_TIME = 3, 0.01
    try:
        peak = dict(base.peak_flops, fp32=gemm_rate(torch.float32))
        return Hardware(**dict(base.__dict__, peak_flops=peak, gemm_curve=gemm_curve(), mem_bandwidth_Bps=memory_bandwidth(),
                                fft_flops=fft_rate(), vector_flops=vector_rate(), op_overhead_s=op_overhead(),
                                source=base.source + "; compute re-measured by quick_compute at run time"))
    finally:
        REPEAT, MIN_TIME = saved


def main(out: str | None, threads: int = 1, mpi_ranks=(2, 4)) -> Path:
    path = Path(out) if out else Path(__file__).resolve().parent / "hardware" / "this_machine.yaml"
    hw = calibrate(threads, mpi_ranks, keep_links_from=path)
    ranks = ",".join(str(r) for r in mpi_ranks)
    save_hardware(hw, path, f"Measured on this machine by: python -m perfmodel calibrate --threads {threads} "
                            f"--mpi-ranks '{ranks}'" + (" (MPI links kept from the previous file)" if not mpi_ranks else "") + "\n"
                            f"{hw.source}")
    print(f"wrote {path}")
    return path
