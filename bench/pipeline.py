"""The host-side work around the model at production size, per member-step, next to perfmodel's GPU step time.

    python bench/pipeline.py [--ranks 4] [--members 16] [--grid 720 1440] [--channels 20] [--lead-steps 40]
                             [--output-every 4] [--snapshot-every 4] [--steps 8] [--hardware h200] [--dir /tmp]

Launches itself under tools/mpirun.sh on --ranks ranks (layout ensemble = ranks, each rank its share of
the members on the whole grid) and runs, with the app's own code and no model, what a step costs besides
the network: the initial noise (once per initial time, spread over --lead-steps steps), the NaN/Inf
flags, and at each output step (daily: every --output-every 6-hourly steps) the denormalisation, the
ensemble mean and spread reduced over the ranks, the host copy of the members, and the zarr region
writes in the background thread; a resume snapshot every --snapshot-every output steps. "in the loop"
is what the step loop waits for (the background writes overlap the following steps); "background" is
the writer thread's time. The GPU step is perfmodel's prediction for the production AFNO on the same
layout (members_per_pass = the rank's members), divided by the members of a pass.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args) -> None:
    from mpi4py import MPI
    from hpc_fcn.config import from_dict
    from hpc_fcn.ensemble.config import PerturbationConfig
    from hpc_fcn.ensemble.perturb import Perturber
    from hpc_fcn.ensemble.products import ensemble_statistics, to_host
    from hpc_fcn.ensemble.rollout import FiniteFlags
    from hpc_fcn.io.zarr import BackgroundWriter, ZarrForecastStore
    from hpc_fcn.parallel.grid import ProcessGrid
    from hpc_fcn.parallel.split import shard_range
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    grid = ProcessGrid(comm, ensemble=comm.size)
    M, C, (H, W) = args.members, args.channels, args.grid
    mine = range(*shard_range(M, comm.size, comm.rank))
    names = [f"c{i:02d}" for i in range(C)]
    tmp = Path(args.dir)
    t = {k: 0.0 for k in ("noise", "nan_flags", "statistics", "to_host", "submit", "snapshot")}

    def timed(key, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        t[key] += time.perf_counter() - t0
        return out

    pert = Perturber(from_dict(PerturbationConfig, {}, []), channels=names, nlat=H, nlon=W, rows=slice(0, H),
                     cols=slice(0, W), seed=1, control=False)
    x0 = torch.zeros(C, H, W)
    state = timed("noise", pert.perturb, x0, 0, list(mine))
    mean_c, std_c = torch.full((C, 1, 1), 5.0), torch.full((C, 1, 1), 2.0)
    outputs = [s for s in range(1, args.steps + 1) if s % args.output_every == 0]
    meta = dict(variables=names, units={n: "1" for n in names}, standard_names={},
                long_names={n: n for n in names}, lat=np.linspace(90, -90, H), lon=np.linspace(0, 360, W, endpoint=False),
                init_time=np.datetime64("2020-01-01T00", "h"), lead_hours=[6 * s for s in outputs], n_members=M)
    if comm.rank == 0:
        for p in ("members", "mean", "spread"):
            ZarrForecastStore.create(tmp / f"{p}.zarr", product=p, chunk_rows=H, chunk_cols=W, **meta)
    comm.Barrier()
    stores = {p: ZarrForecastStore.open(tmp / f"{p}.zarr") for p in ("members", "mean", "spread")}
    bg = BackgroundWriter()
    busy = [0.0]

    def job(fn):
        def run():
            t0 = time.perf_counter()
            fn()
            busy[0] += time.perf_counter() - t0
        return run

    flags = FiniteFlags(grid.world, mine, names, 6, "bench")
    comm.Barrier()
    t_loop = time.perf_counter()
    for s in range(1, args.steps + 1):
        timed("nan_flags", flags.add, s, state)
        if s in outputs:
            li = outputs.index(s)
            timed("nan_flags", flags.check)
            t0 = time.perf_counter()
            phys = state * std_c + mean_c
            mean, spread = ensemble_statistics(phys, M, grid.ensemble)
            t["statistics"] += time.perf_counter() - t0
            host = timed("to_host", lambda: phys.cpu().numpy().copy())
            jobs = [job(lambda li=li, h=host: stores["members"].write(li, h, rows=slice(0, H), cols=slice(0, W),
                                                                       members=slice(mine.start, mine.stop)))]
            if comm.rank == 0:
                for p, v in (("mean", to_host(mean)), ("spread", to_host(spread))):
                    jobs.append(job(lambda li=li, p=p, v=v: stores[p].write(li, v.numpy(), rows=slice(0, H),
                                                                             cols=slice(0, W))))
            timed("submit", bg.submit, jobs)
            if (li + 1) % args.snapshot_every == 0:
                timed("snapshot", torch.save, state, tmp / f"snap{comm.rank}.pt")
    loop = time.perf_counter() - t_loop
    t0 = time.perf_counter()
    bg.wait()
    bg.close()
    tail = time.perf_counter() - t0
    comm.Barrier()
    res = dict(t, loop=loop, tail=tail, background=busy[0], members=len(mine), steps=args.steps,
               lead_steps=args.lead_steps)
    every = comm.gather(res, root=0)
    if comm.rank == 0:
        print("RESULT " + json.dumps(every), flush=True)


def gpu_step_per_member(args, members_per_pass: int) -> float:
    import perfmodel
    from hpc_fcn.config import from_dict
    from hpc_fcn.schema import ModelConfig
    mc = from_dict(ModelConfig, {"img_size": list(args.grid), "patch_size": 8, "embed_dim": 768, "depth": 12}, [])
    pred = perfmodel.predict(mc.kwargs(args.channels, args.channels), hardware=args.hardware,
                             layout={"ensemble": args.ranks, "h": 1, "w": 1, "matmul": 1}, members=args.members,
                             members_per_pass=members_per_pass, precision="bf16")
    return pred.step_time_s / members_per_pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--grid", type=int, nargs=2, default=[720, 1440])
    ap.add_argument("--channels", type=int, default=20)
    ap.add_argument("--lead-steps", type=int, default=40)
    ap.add_argument("--output-every", type=int, default=4)
    ap.add_argument("--snapshot-every", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--hardware", default="h200")
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    tmp = tempfile.mkdtemp(prefix="hpc_fcn_bench_pipeline_", dir=args.dir)
    try:
        cmd = [str(ROOT / "tools" / "mpirun.sh"), "-n", str(args.ranks), sys.executable, __file__, "--worker",
               "--dir", tmp] + [a for a in sys.argv[1:] if a != "--worker"]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ranks = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    r = max(ranks, key=lambda d: d["loop"])  # the slowest rank sets the pace
    m, ms = r["members"], r["members"] * r["steps"]
    per = {k: r[k] / ms for k in ("nan_flags", "statistics", "to_host", "submit", "snapshot")}
    per["noise"] = r["noise"] / (m * r["lead_steps"])  # once per initial time
    gpu = gpu_step_per_member(args, m)
    # the same work on a GPU node, from bandwidths: device passes at HBM speed, copies at HOST_LINK_BPS
    import perfmodel
    hbm = perfmodel.load_hardware(args.hardware).mem_bandwidth_Bps
    field = args.channels * args.grid[0] * args.grid[1] * 4  # one member's state, bytes
    oe, se = args.output_every, args.snapshot_every
    est = {"nan_flags": field / hbm, "statistics": 3 * field / hbm / oe, "to_host": field / HOST_LINK_BPS / oe,
           "submit": per["submit"], "snapshot": field / HOST_LINK_BPS / (oe * se) + field / DISK_BPS / (oe * se),
           "noise": 2 * field / hbm / r["lead_steps"]}
    print(f"{args.ranks} ranks, {args.members} members, {args.channels} x {args.grid[0]} x {args.grid[1]}, output every "
          f"{oe} steps, snapshot every {se} outputs; slowest rank, {m} members, {r['steps']} steps\n")
    print(f"| work | measured here, ms per member-step | GPU node estimate, ms | share of the predicted "
          f"{args.hardware} step |")
    print("|---|---|---|---|")
    for k in per:
        print(f"| {k} | {per[k] * 1e3:.2f} | {est[k] * 1e3:.3f} | {est[k] / gpu:.1%} |")
    loop, loop_est = sum(per.values()), sum(est.values())
    print(f"| **in the loop (after overlap)** | **{loop * 1e3:.2f}** | **{loop_est * 1e3:.3f}** | "
          f"**{loop_est / gpu:.1%}** |")
    bgw = r["background"] / ms
    print(f"| zarr writes (background thread, overlapped) | {bgw * 1e3:.2f} | | |")
    print(f"| predicted {args.hardware} step (perfmodel, bf16, {m} members per pass) | | {gpu * 1e3:.2f} | 100% |")
    print(f"\nGPU node estimate: device passes at {hbm / 1e12:.1f} TB/s (flags: one read of the state per step; "
          f"statistics: three per output step), copies to the host at {HOST_LINK_BPS / 1e9:.0f} GB/s (pinned), "
          f"snapshots written at {DISK_BPS / 1e9:.0f} GB/s, submit as measured here.")


HOST_LINK_BPS = 25e9  # pinned device-to-host copies (PCIe 5 x16 achieves ~25-50 GB/s)
DISK_BPS = 2e9  # a node-local NVMe or a parallel file system stripe


if __name__ == "__main__":
    main()
