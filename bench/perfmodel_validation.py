"""Validate the performance model on this machine: traced forward passes vs predictions.

    .venv/bin/python bench/perfmodel_validation.py [--hardware this_machine] [--out runs/perfmodel_validation]
                                                   [--passes 5] [--configs 'S b1 1r' ...] [--plots docs/img]

Runs every configuration below as its own ``tools/mpirun.sh -n R`` job (1, 2 and 4 ranks, one torch
thread per rank), each writing trace summaries with ``hpc_fcn.tracing.write_traces``; then compares
predicted and measured time per region and per pass (MAPE) and predicted vs measured peak tensor
memory (weights + buffers + the torch profiler's peak of memory allocated during a pass), and draws
the charts into --plots (docs/img/). Not part of ``make test`` at full size: it takes several minutes
(tests/test_bench_smoke.py runs two configurations with --passes 1).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {
    "S": dict(img_size=(64, 128), patch_size=4, in_chans=8, out_chans=8, embed_dim=128, depth=4, num_blocks=8),
    "M": dict(img_size=(128, 256), patch_size=4, in_chans=8, out_chans=8, embed_dim=256, depth=4, num_blocks=8),
    "L": dict(img_size=(96, 192), patch_size=4, in_chans=8, out_chans=8, embed_dim=384, depth=4, num_blocks=8),
    # the released checkpoint's shapes at 0.25 degrees with 2 of its 12 blocks (every block costs the same)
    "P": dict(img_size=(720, 1440), patch_size=8, in_chans=20, out_chans=20, embed_dim=768, depth=2, num_blocks=8),
}
# (label, model, members per pass, layout e,h,w,m, strong-scaling group)
CONFIGS = [
    ("S b1 1r", "S", 1, "1,1,1,1", ""),
    ("S b4 1r", "S", 4, "1,1,1,1", ""),
    ("M b1 1r", "M", 1, "1,1,1,1", ""),
    ("M b2 1r", "M", 2, "1,1,1,1", "M b2"),
    ("M b4 1r", "M", 4, "1,1,1,1", ""),
    ("L b2 1r", "L", 2, "1,1,1,1", ""),
    ("M b2 h2", "M", 2, "1,2,1,1", "M b2"),
    ("M b2 w2", "M", 2, "1,1,2,1", ""),
    ("M b2 m2", "M", 2, "1,1,1,2", ""),
    ("M b2 h2w2", "M", 2, "1,2,2,1", "M b2"),
    ("M b2 h2m2", "M", 2, "1,2,1,2", ""),
    ("P b1 1r", "P", 1, "1,1,1,1", ""),
    ("P b1 h2", "P", 1, "1,2,1,1", ""),
    ("P b2 h2w2", "P", 2, "1,2,2,1", ""),
]


def worker(args) -> None:
    """One configuration on the ranks of this mpirun: build, instrument, time ``passes`` forward passes."""
    import torch
    from mpi4py import MPI
    torch.set_num_threads(1)
    from hpc_fcn.instrument import instrument
    from hpc_fcn.model.afnonet import AFNONet
    from hpc_fcn.tracing import Tracer, write_traces
    comm = MPI.COMM_WORLD
    Path(args.out).mkdir(parents=True, exist_ok=True)
    kw = MODELS[args.model]
    e, h, w, m = (int(v) for v in args.layout.split(","))
    import time
    # CPU time of this rank's (single) thread: the machine is shared, and other jobs' load would
    # otherwise dominate wall-clock timings; the calibration uses the same clock
    tracer = Tracer(enabled=True, rank=comm.rank, clock=time.thread_time if args.clock == "cpu" else time.perf_counter)
    torch.manual_seed(0)
    serial = AFNONet(**kw)
    x_full = torch.randn(args.batch, kw["in_chans"], *kw["img_size"])
    if comm.size == 1:
        model, x = serial, x_full
    else:
        from hpc_fcn.parallel.grid import ProcessGrid
        from hpc_fcn.parallel.model import DistributedAFNONet, scatter_field
        grid = ProcessGrid(comm, ensemble=e, h=h, w=w, matmul=m, backend="mpi", tracer=tracer)
        model = DistributedAFNONet.from_serial(serial, None, grid)
        x = scatter_field(grid, x_full, kw["img_size"], kw["patch_size"])
    del serial, x_full
    model.eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # this machine's compute speed drifts with other jobs: re-measure it beside the run, on every rank
    from perfmodel.calibrate import quick_compute
    from perfmodel.hardware import load_hardware
    comm.Barrier()
    local_hw = quick_compute(load_hardware(args.hardware)).to_dict()
    everyone = comm.allgather(local_hw)
    run_hw = dict(local_hw)
    for key in ("mem_bandwidth_Bps", "fft_flops", "vector_flops", "op_overhead_s"):
        run_hw[key] = sorted(h[key] for h in everyone)[len(everyone) // 2]
    handle = instrument(model, tracer)
    with torch.no_grad():
        for _ in range(2):  # warm up (allocator, FFT plans, MPI buffers)
            model(x)
        comm.Barrier()
        tracer.reset()
        for _ in range(args.passes):
            comm.Barrier()
            with tracer.region("step"):
                y = model(x)
    handle.remove()
    fastest = fastest_pass(tracer, comm)
    # peak memory of one pass: tensors allocated during it, from the profiler's allocation events
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        y = model(x)
    trace = Path(args.out) / f"mem.rank{comm.rank}.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    trace.unlink()
    live = [ev["args"]["Total Allocated"] for ev in events if ev.get("name") == "[memory]"]
    io = x.numel() * x.element_size() + y.numel() * y.element_size()
    peak = comm.allreduce(weights + io + (max(live) if live else 0), op=MPI.MAX)
    meta = dict(label=args.label, model=args.model, model_kwargs=kw, layout=dict(ensemble=e, h=h, w=w, matmul=m),
                members_per_pass=args.batch, precision="fp32", passes=args.passes, group=args.group,
                ranks_per_node=comm.size if args.clock == "wall" else 1, threads=1, clock=args.clock, peak_tensor_bytes=peak, measured_fastest=fastest,
                hardware=run_hw)
    write_traces(tracer, args.out, comm, meta)


def fastest_pass(tracer, comm) -> dict[str, float]:
    """Per region, the time of the fastest pass (each pass: its busiest rank). The machine is shared,
    so the fastest of several passes is the least disturbed estimate of what it can do."""
    from perfmodel.compare import OUTSIDE_HOOKS, REGIONS
    from hpc_fcn.tracing import region_kind
    steps = [(s, s + d) for n, c, s, d, *_ in tracer.events if n == "step"]
    per_pass = []
    for a, b in steps:
        acc = {"step": b - a}
        for n, c, s, d, *_ in tracer.events:
            kind = region_kind(n)
            if n == "step" or not a <= s < b or kind not in REGIONS or (c == "comm" and kind not in OUTSIDE_HOOKS):
                continue
            acc[kind] = acc.get(kind, 0.0) + d
        per_pass.append(acc)
    everyone = comm.allgather(per_pass)
    keys = set().union(*(p.keys() for r in everyone for p in r))
    busiest = [{k: max(r[i].get(k, 0.0) for r in everyone) for k in keys} for i in range(len(steps))]
    return {k: min(p[k] for p in busiest) for k in keys}


def run_all(args) -> tuple[list[Path], list[str]]:
    """Run the configurations; (their summaries, the labels of those that failed)."""
    out = Path(args.out)
    paths, failed = [], []
    for label, model, batch, layout, group in CONFIGS:
        if args.configs and label not in args.configs:
            continue
        ranks = 1
        for v in layout.split(","):
            ranks *= int(v)
        d = out / label.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        cmd = ["timeout", "600", str(ROOT / "tools" / "mpirun.sh"), "-n", str(ranks), sys.executable, __file__, "--worker",
               "--label", label, "--model", model, "--batch", str(batch), "--layout", layout, "--group", group,
               "--passes", str(args.passes), "--clock", args.clock, "--hardware", args.hardware, "--out", str(d)]
        t = time.perf_counter()
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            print(f"{label}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
            failed.append(label)
            continue
        print(f"{label}: {time.perf_counter() - t:.1f} s", flush=True)
        paths.append(d / "summary.json")
    return paths, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--label", default="")
    ap.add_argument("--model", default="S")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layout", default="1,1,1,1")
    ap.add_argument("--group", default="")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--configs", nargs="+", choices=[c[0] for c in CONFIGS], metavar="LABEL",
                    help="run only these configurations (labels of CONFIGS, e.g. 'S b1 1r'; default: all)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: each rank's thread CPU time (robust on a shared machine); wall: perf_counter")
    ap.add_argument("--out", default=str(ROOT / "runs" / "perfmodel_validation"))
    ap.add_argument("--hardware", default="this_machine")
    ap.add_argument("--plots", default=str(ROOT / "docs" / "img"))
    ap.add_argument("--only-compare", action="store_true", help="reuse the summaries already under --out")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    from perfmodel.compare import compare, load_summary, plots, print_report
    failed: list[str] = []
    if args.only_compare:
        paths = sorted(Path(args.out).glob("*/summary.json"))
    else:
        paths, failed = run_all(args)
    if not paths:
        print("no configuration produced a summary", file=sys.stderr)
        return 1
    summaries = [load_summary(p) for p in paths]
    print(f"== against {args.hardware}.yaml (one calibration for every run)")
    print_report(compare(summaries, args.hardware))
    print("== against each run's own compute calibration, measured beside it (--hardware run)")
    res = compare(summaries, "run")
    print_report(res)
    print(f"{'config':<14}{'pred MB':>10}{'meas MB':>10}{'err %':>8}")
    errs = []
    for r in res["rows"]:
        if r["memory_meas"]:
            e = 100 * (r["memory_pred"] - r["memory_meas"]) / r["memory_meas"]
            errs.append(abs(e))
            print(f"{r['label']:<14}{r['memory_pred'] / 1e6:>10.1f}{r['memory_meas'] / 1e6:>10.1f}{e:>8.1f}")
    if errs:
        print(f"memory: mean |error| {sum(errs) / len(errs):.1f} %, max {max(errs):.1f} %")
    for p in plots(res, "run", args.plots, args.hardware):
        print(f"wrote {p}")
    (Path(args.out) / "comparison.json").write_text(json.dumps(res, indent=1, default=str))
    if failed:
        print(f"failed (not in the tables): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
