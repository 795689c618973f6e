"""The host work around the model at production size, per member-step, after overlap, next to perfmodel's GPU step.

    python bench/pipeline.py [--ranks 4] [--members 16] [--grid 720 1440] [--channels 20] [--lead-steps 40]
                             [--output-every 4] [--snapshot-every 2] [--steps 16] [--model-ms auto]
                             [--hardware h200] [--dir /tmp]

Launches itself under tools/mpirun.sh on --ranks ranks (layout ensemble = ranks, each rank its share of the
members on the whole grid) and runs, with the app's own code and no model, what a step costs besides the
network: the initial noise (once per initial time, spread over --lead-steps steps), the NaN/Inf flags, and at
each output step (daily: every --output-every 6-hourly steps) the denormalisation, the ensemble mean and
spread reduced over the ranks, the members' host copy and the zarr region writes on the writer thread; a
resume snapshot every --snapshot-every output steps. The model is stood in for by a sleep of --model-ms per
step (default: perfmodel's predicted step for the rank's members), during which the writer thread can work,
as it would while the GPU computes.

Four variants in one run, interleaved: the previous synchronous path ("sync": members copied to the host by
the main thread, snapshots written by it) and the app's asynchronous one ("async": HostBuffers copies, the
writer thread, SnapshotStore.save/complete), each with and without snapshots. "blocked" is the main thread's
time outside the model per member-step: what the step loop waits for, plus the wait for the writer at the end.
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
KEYS = ("nan_flags", "statistics", "to_host", "agree", "queue_wait", "submit", "snapshot", "tail")
VARIANTS = [("sync", False), ("async", False), ("sync", True), ("async", True)]


def worker(args) -> None:
    from mpi4py import MPI
    from hpc_fcn.accel.hostcopy import HostBuffers
    from hpc_fcn.config import from_dict
    from hpc_fcn.ensemble.config import PerturbationConfig
    from hpc_fcn.ensemble.perturb import Perturber
    from hpc_fcn.ensemble.products import ensemble_statistics
    from hpc_fcn.io.zarr import _region_job
    from hpc_fcn.ensemble.rollout import FiniteFlags
    from hpc_fcn.ensemble.snapshot import SnapshotStore, _atomic_save, _box_name
    from hpc_fcn.io.background import BackgroundWriter
    from hpc_fcn.io.zarr import ZarrForecastStore
    from hpc_fcn.parallel.grid import ProcessGrid
    from hpc_fcn.parallel.split import shard_range
    from hpc_fcn.runtime import fail_together
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    grid = ProcessGrid(comm, ensemble=comm.size)
    world = grid.world
    M, C, (H, W) = args.members, args.channels, args.grid
    mine = range(*shard_range(M, comm.size, comm.rank))
    rows, cols = slice(0, H), slice(0, W)
    names = [f"c{i:02d}" for i in range(C)]
    tmp = Path(args.dir)
    model_s = args.model_ms / 1e3
    pert = Perturber(from_dict(PerturbationConfig, {}, []), channels=names, nlat=H, nlon=W, rows=rows, cols=cols,
                     seed=1, control=False)
    t0 = time.perf_counter()
    state = pert.perturb(torch.zeros(C, H, W), 0, list(mine))
    noise = time.perf_counter() - t0
    mean_c, std_c = torch.full((C, 1, 1), 5.0), torch.full((C, 1, 1), 2.0)
    outputs = [s for s in range(1, args.steps + 1) if s % args.output_every == 0]
    meta = dict(variables=names, units={n: "1" for n in names}, standard_names={},
                long_names={n: n for n in names}, lat=np.linspace(90, -90, H), lon=np.linspace(0, 360, W, endpoint=False),
                init_time=np.datetime64("2020-01-01T00", "h"), lead_hours=[6 * s for s in outputs], n_members=M)
    buffers = HostBuffers("cpu")

    def variant(mode: str, snaps: bool) -> dict:
        t = {k: 0.0 for k in KEYS}
        out = tmp / f"{mode}{int(snaps)}"
        if comm.rank == 0:
            for p in ("members", "mean", "spread"):
                ZarrForecastStore.create(out / f"{p}.zarr", product=p, chunk_rows=H, chunk_cols=W, **meta)
        comm.Barrier()
        stores = {p: ZarrForecastStore.open(out / f"{p}.zarr") for p in ("members", "mean", "spread")}
        busy = [0.0]

        def job(fn):
            def run():
                b0 = time.perf_counter()
                fn()
                busy[0] += time.perf_counter() - b0
            return run

        def timed(key, fn, *a):
            a0 = time.perf_counter()
            r = fn(*a)
            t[key] += time.perf_counter() - a0
            return r

        with BackgroundWriter() as bg:
            store = SnapshotStore(out, world, {}, writer=bg)
            flags = FiniteFlags(world, mine, names, 6, "bench")
            comm.Barrier()
            start, slept = time.perf_counter(), 0.0
            for s in range(1, args.steps + 1):
                z0 = time.perf_counter()
                time.sleep(model_s)  # the GPU step; the writer thread runs meanwhile
                slept += time.perf_counter() - z0
                timed("nan_flags", flags.add, s, state)
                if s not in outputs:
                    continue
                li = outputs.index(s)
                timed("nan_flags", flags.check)
                a0 = time.perf_counter()
                phys = state * std_c + mean_c
                mean, spread = ensemble_statistics(phys, M, grid.ensemble)
                t["statistics"] += time.perf_counter() - a0
                snap = snaps and (li + 1) % args.snapshot_every == 0
                if mode == "async":
                    host = timed("to_host", buffers.copy, phys)
                    jobs = [job(_region_job(stores["members"], li, host, rows=rows, cols=cols,
                                            members=slice(mine.start, mine.stop)))]
                    if comm.rank == 0:
                        jobs += [job(_region_job(stores[p], li, buffers.copy(v), rows=rows, cols=cols))
                                 for p, v in (("mean", mean), ("spread", spread))]
                    timed("agree", fail_together, world, bg.take_error())  # one allgather: absorbs rank skew
                    timed("queue_wait", bg.wait_for_room)  # back-pressure: the writer is still busy
                    timed("submit", bg.submit, jobs)
                    if snap:
                        timed("snapshot", store.save, {"step": s}, state, mine, rows, cols, None)
                else:  # the previous path: the main thread copies the members and writes the snapshot
                    host = timed("to_host", lambda: phys.cpu().numpy().copy())
                    jobs = [job(lambda h=host, li=li: stores["members"].write(li, h, rows=rows, cols=cols,
                                                                           members=slice(mine.start, mine.stop)))]
                    if comm.rank == 0:
                        jobs += [job(lambda li=li, p=p, v=v.clone(): stores[p].write(li, v.numpy(), rows=rows,
                                                                                  cols=cols))
                                 for p, v in (("mean", mean), ("spread", spread))]
                    timed("queue_wait", bg.wait_for_room)
                    timed("submit", bg.submit, jobs)
                    if snap:
                        def sync_snapshot(s=s):
                            bg.wait()  # the outputs of the step on disk, as the old settle did
                            world.barrier()
                            d = out / ".resume" / f"slot{s}"
                            d.mkdir(parents=True, exist_ok=True)
                            _atomic_save(state.detach().cpu(), d / _box_name(mine, rows, cols))
                            world.barrier()
                        timed("snapshot", sync_snapshot)
            loop = time.perf_counter() - start
            timed("tail", lambda: (store.complete(), bg.wait()))
        comm.Barrier()
        shutil.rmtree(out, ignore_errors=True)
        return dict(t, loop=loop - slept - sum(t[k] for k in KEYS if k != "tail"), background=busy[0])

    res = {f"{m}{int(sn)}": variant(m, sn) for m, sn in VARIANTS}
    res.update(noise=noise, members=len(mine), steps=args.steps, lead_steps=args.lead_steps,
               allocated=buffers.allocated,
               agree_call=call_cost())
    every = comm.gather(res, root=0)
    if comm.rank == 0:
        print("RESULT " + json.dumps(every), flush=True)


def call_cost(reps: int = 200) -> float:
    """Median host time of the agreement's allgather on MPI.COMM_SELF: the pickling and the Python and MPI call
    overhead, without any wait for other ranks (their latency is priced from the hardware file)."""
    from mpi4py import MPI
    from hpc_fcn.runtime import failure_record, raise_first_failure
    times = []
    for _ in range(reps):
        a0 = time.perf_counter()
        raise_first_failure([w for _, w in MPI.COMM_SELF.allgather((None, failure_record(None)))])
        times.append(time.perf_counter() - a0)
    return float(np.median(times))


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
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--model-ms", type=float, default=None, help="stand-in model step (default: perfmodel's)")
    ap.add_argument("--hardware", default="h200")
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    m_rank = -(-args.members // args.ranks)
    gpu = gpu_step_per_member(args, m_rank)
    if args.model_ms is None:
        args.model_ms = gpu * m_rank * 1e3
    if args.worker:
        return worker(args)
    tmp = tempfile.mkdtemp(prefix="hpc_fcn_bench_pipeline_", dir=args.dir)
    try:
        passed = [a for a in sys.argv[1:] if a != "--worker"]
        cmd = [str(ROOT / "tools" / "mpirun.sh"), "-n", str(args.ranks), sys.executable, __file__, "--worker",
               "--dir", tmp, "--model-ms", str(args.model_ms)] + passed
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        out = proc.stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ranks = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    report(args, ranks, gpu)


def report(args, ranks: list[dict], gpu: float) -> None:
    """Measured main-thread time per member-step (slowest rank), and the GPU node estimate after overlap."""
    import perfmodel
    m = ranks[0]["members"]
    ms = m * ranks[0]["steps"]
    oe, se, L = args.output_every, args.snapshot_every, args.lead_steps
    print(f"{args.ranks} ranks, {args.members} members, {args.channels} x {args.grid[0]} x {args.grid[1]}, output every "
          f"{oe} steps, snapshot every {se} outputs, {ranks[0]['steps']} steps, model stand-in {args.model_ms:.1f} ms "
          f"per step ({m} members per rank); host buffers allocated on rank 0: {ranks[0]['allocated']}\n")
    print("Measured here (CPU, ms per member-step on the main thread outside the model, slowest rank):\n")
    print("| variant | " + " | ".join(KEYS) + " | other | **blocked** | writer thread busy |")
    print("|---|" + "---|" * (len(KEYS) + 3))
    blocked = {}
    for v in ("sync0", "async0", "sync1", "async1"):
        r = max((x[v] for x in ranks), key=lambda d: sum(d[k] for k in KEYS) + d["loop"])
        blocked[v] = (sum(r[k] for k in KEYS) + r["loop"]) / ms
        name = f"{v[:-1]}, {'snapshots' if v[-1] == '1' else 'no resume'}"
        print(f"| {name} | " + " | ".join(f"{r[k] / ms * 1e3:.2f}" for k in KEYS)
              + f" | {r['loop'] / ms * 1e3:.2f} | **{blocked[v] * 1e3:.2f}** | {r['background'] / ms * 1e3:.2f} |")
    print(f"\nasync / sync blocked time: {blocked['async0'] / blocked['sync0']:.2f} without resume, "
          f"{blocked['async1'] / blocked['sync1']:.2f} with snapshots; noise "
          f"{max(x['noise'] for x in ranks) / (m * L) * 1e3:.2f} ms per member-step (once per initial time)\n")
    # the same work on a GPU node: device passes at HBM speed, copies at HOST_LINK_BPS, each rank's writes at DISK_BPS
    hw = perfmodel.load_hardware(args.hardware)
    hbm = hw.mem_bandwidth_Bps
    field = args.channels * args.grid[0] * args.grid[1] * 4  # one member's state, bytes
    window = oe * m * gpu  # GPU time between two output steps on a rank
    device = field / hbm + 3 * field / hbm / oe + 2 * field / hbm / L  # flags, statistics, noise (GPU time)
    copy_out, copy_snap = m * field / HOST_LINK_BPS, m * field / HOST_LINK_BPS / se
    disk_out, disk_snap = m * field / DISK_BPS, m * field / DISK_BPS / se
    # main-thread issue cost of the async path: submit, and the snapshot less its host copy (on CPU a memcpy as
    # long as the members' copy, timed as to_host; on a GPU a DMA that overlaps)
    n_out = len([s for s in range(1, ranks[0]["steps"] + 1) if s % oe == 0])
    n_snap = n_out // se
    snap_issue = max(0.0, ranks_key(ranks, "async1", "snapshot")
                     - ranks_key(ranks, "async1", "to_host") * n_snap / max(n_out, 1))
    # The agreement's allgather: its host call measured here on one rank, plus (p - 1) link latencies of the
    # hardware file. In this CPU's loop the ranks also wait for the slowest one, i.e. for 4 ranks sharing 2
    # cores, which identical GPUs running balanced passes do not have (printed, not counted); the queue
    # wait is the writer's disk time, counted in the last column.
    link = hw.link("all_gather", args.ranks)
    latency = max(x["agree_call"] for x in ranks) + (args.ranks - 1) * link.alpha_s
    agree = {v: latency * n_out for v in ("async0", "async1")}
    print(f"agreement allgather: {latency * 1e3:.3f} ms per output step on the GPU node (host call "
          f"{max(x['agree_call'] for x in ranks) * 1e3:.3f} ms measured on one rank + {args.ranks - 1} x "
          f"{link.alpha_s * 1e6:.0f} us link latency); in this CPU's loop "
          f"{min(x['async0']['agree'] for x in ranks) / max(n_out, 1) * 1e3:.2f} ms on the rank that waits least "
          f"(the wait for ranks sharing 2 cores included)\n")
    issue = {"0": (ranks_key(ranks, "async0", "submit") + agree["async0"]) / ms,
             "1": (ranks_key(ranks, "async1", "submit") + agree["async1"] + snap_issue) / ms}
    rows = []
    for snaps in (False, True):
        cp = copy_out + (copy_snap if snaps else 0.0)
        dk = disk_out + (disk_snap if snaps else 0.0)
        sync = device + (cp + (disk_snap if snaps else 0.0)) / (oe * m) + issue["1" if snaps else "0"]
        overlap = device + issue["1" if snaps else "0"] + max(0.0, cp - window) / (oe * m)
        disk_stall = max(0.0, dk - window) / (oe * m)
        rows.append((snaps, sync, overlap, disk_stall))
    print(f"GPU node estimate ({args.hardware}; predicted step {gpu * 1e3:.2f} ms per member-step, perfmodel, bf16, {m} "
          f"members per pass), ms per member-step and share of the step:\n")
    print("| run | previous synchronous path | after overlap: device passes + issue + copies beyond the window "
          "| + writer beyond the window (disk-bound) |")
    print("|---|---|---|---|")
    for snaps, sync, overlap, stall in rows:
        name = "resume, snapshots" if snaps else "no resume"
        print(f"| {name} | {sync * 1e3:.3f} ({sync / gpu:.1%}) | **{overlap * 1e3:.3f} ({overlap / gpu:.1%})** | "
              f"{(overlap + stall) * 1e3:.3f} ({(overlap + stall) / gpu:.1%}) |")
    print(f"\nDevice passes at {hbm / 1e12:.1f} TB/s (flags: one read of the state per step; statistics: three per output "
          f"step; noise: two per initial time); copies to pinned host buffers at {HOST_LINK_BPS / 1e9:.0f} GB/s on a "
          f"side stream, hidden while shorter than the {window * 1e3:.0f} ms between output steps; each rank's writer "
          f"at {DISK_BPS / 1e9:.0f} GB/s (members {disk_out * 1e3:.0f} ms per output step, snapshot "
          f"{m * field / DISK_BPS * 1e3:.0f} ms); issue = the async path's measured main-thread submit + snapshot "
          f"time here (Python) and the error agreement's allgather priced above, the "
          f"snapshot's host copy taken out (a DMA on a GPU); the queue wait (the writer still busy) is the disk, "
          f"in the last column.")


def ranks_key(ranks: list[dict], variant: str, key: str) -> float:
    return max(x[variant][key] for x in ranks)


HOST_LINK_BPS = 25e9  # pinned device-to-host copies (PCIe 5 x16 achieves ~25-50 GB/s)
DISK_BPS = 2e9  # a node-local NVMe or a parallel file system stripe, per rank


if __name__ == "__main__":
    main()
