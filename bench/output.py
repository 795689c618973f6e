"""Output throughput: netCDF (windows gathered to rank 0, one writer) vs zarr (every rank writes its region).

    python bench/output.py [--ranks 1 2 4] [--members 16] [--steps 2] [--grid 720 1440] [--channels 20]
                           [--dir /tmp]

Launches itself under tools/mpirun.sh for each rank count. Each rank holds members // ranks members of
the whole grid (the ensemble layout) as the app does at an output step; both formats write the same
fields, one after the other in the same job, through the same code as the app (``ForecastWriter`` with
``gather_window_to_root``, ``ZarrForecastStore`` with the background writer). The time of an output step
includes waiting for the background writes at the end. Files go to a temporary folder under --dir and
are deleted afterwards. Prints one table: ranks, format, s per output step, MB/s, zarr/netCDF.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fields(members: range, C: int, H: int, W: int) -> np.ndarray:
    """Smooth fields with small-scale noise (compress about like model output), one per member."""
    y, x = np.meshgrid(np.linspace(0, np.pi, H, dtype=np.float32), np.linspace(0, 2 * np.pi, W, dtype=np.float32),
                       indexing="ij")
    base = np.stack([np.sin((c + 1) * y) * np.cos((c % 5 + 1) * x) * (100 + c) for c in range(C)])
    rng = np.random.default_rng(members.start)
    out = np.empty((len(members), C, H, W), np.float32)
    for i, _ in enumerate(members):
        out[i] = base + rng.standard_normal((C, H, W), dtype=np.float32) * 0.1
    return out


def worker(args) -> None:
    from mpi4py import MPI
    from hpc_fcn.io.netcdf import ForecastWriter
    from hpc_fcn.parallel.windows import gather_window_to_root
    from hpc_fcn.io.background import BackgroundWriter
    from hpc_fcn.io.zarr import ZarrForecastStore
    from hpc_fcn.parallel.comm import MPICommunicator
    from hpc_fcn.parallel.split import shard_range
    comm = MPI.COMM_WORLD
    io = MPICommunicator(comm, "io")  # gather_window_to_root takes a Communicator, as the app passes it
    M, C, (H, W), S = args.members, args.channels, args.grid, args.steps
    mine = range(*shard_range(M, comm.size, comm.rank))
    data = fields(mine, C, H, W)
    names = [f"c{i:02d}" for i in range(C)]
    meta = dict(variables=names, units={n: "1" for n in names}, standard_names={},
                long_names={n: n for n in names}, lat=np.linspace(90, -90, H), lon=np.linspace(0, 360, W, endpoint=False),
                init_time=np.datetime64("2020-01-01T00", "h"), lead_hours=[24 * (i + 1) for i in range(S)],
                product="members", n_members=M)
    tmp = Path(args.dir)
    result = {}
    for fmt in ("netcdf", "zarr"):
        comm.Barrier()
        t0 = time.perf_counter()
        if fmt == "netcdf":
            f = ForecastWriter(tmp / "bench.nc", **meta) if comm.rank == 0 else None
            for li in range(S):
                for m in range(M):
                    own = data[m - mine.start][None] if m in mine else None
                    full = gather_window_to_root(io, own, (1, C, H, W))
                    if full is not None:
                        f.write(li, full, members=slice(m, m + 1))
                if f is not None:
                    f.flush()
            if f is not None:
                f.close()
        else:
            path = tmp / "bench.zarr"
            if comm.rank == 0:
                ZarrForecastStore.create(path, chunk_rows=H, chunk_cols=W, **meta)
            comm.Barrier()
            store = ZarrForecastStore.open(path)
            bg = BackgroundWriter()
            for li in range(S):
                bg.submit([lambda li=li: store.write(li, data, rows=slice(0, H), cols=slice(0, W),
                                                     members=slice(mine.start, mine.stop))])
            bg.wait()
            bg.close()
            comm.Barrier()
            if comm.rank == 0:
                store.set_leads_complete(S)
                ZarrForecastStore.consolidate(path)
        comm.Barrier()
        result[fmt] = (time.perf_counter() - t0) / S
    if comm.rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--grid", type=int, nargs=2, default=[720, 1440])
    ap.add_argument("--channels", type=int, default=20)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    mb = args.members * args.channels * args.grid[0] * args.grid[1] * 4 / 1e6
    rows = []
    for n in args.ranks:
        tmp = tempfile.mkdtemp(prefix="hpc_fcn_bench_output_", dir=args.dir)
        try:
            cmd = [str(ROOT / "tools" / "mpirun.sh"), "-n", str(n), sys.executable, __file__, "--worker",
                   "--members", str(args.members), "--steps", str(args.steps), "--grid", *map(str, args.grid),
                   "--channels", str(args.channels), "--dir", tmp]
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            out = proc.stdout
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        res = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
        rows.append((n, res))
    print(f"{args.members} members x {args.channels} channels x {args.grid[0]} x {args.grid[1]} float32 = "
          f"{mb:.0f} MB per output step, {args.steps} output steps\n")
    print("| ranks | format | s per output step | MB/s | zarr / netCDF |")
    print("|---|---|---|---|---|")
    for n, res in rows:
        for fmt in ("netcdf", "zarr"):
            ratio = f"{res['netcdf'] / res['zarr']:.2f}x" if fmt == "zarr" else ""
            print(f"| {n} | {fmt} | {res[fmt]:.2f} | {mb / res[fmt]:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
