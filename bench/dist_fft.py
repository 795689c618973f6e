"""Distributed rfft2 + irfft2 on 1, 2 and 4 ranks: time per call, communication share, speed-up.

    .venv/bin/python bench/dist_fft.py [--tokens 90 180] [--channels 96] [--batch 1] [--reps 10] [--max-ranks 4]

The driver launches one ``mpirun`` per layout (those of at most ``--max-ranks`` ranks) and prints one
table; ratios are against 1 rank of the same run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYOUTS = [(1, 1), (2, 1), (1, 2), (4, 1), (2, 2)]


def worker(a) -> None:
    import torch
    from mpi4py import MPI

    from hpc_fcn.parallel import DistributedFFT2, ProcessGrid
    from harness import time_calls
    from hpc_fcn.tracing import Tracer
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    H, W = a.tokens
    with ProcessGrid(comm, h=a.h, w=a.w, backend=a.backend, tracer=Tracer(rank=comm.rank)) as grid:
        f = DistributedFFT2(grid, H, W)
        x = torch.randn(a.batch, f.rows.stop - f.rows.start, f.cols.stop - f.cols.start, a.channels)
        r = time_calls(lambda: f.irfft2(f.rfft2(x)), grid.tracer, comm, a.reps)
    if comm.rank == 0:
        Path(a.json).write_text(json.dumps([dict(r, ranks=comm.size, layout=f"h{a.h} x w{a.w}",
                                                 backend=a.backend)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs=2, default=[90, 180])
    p.add_argument("--channels", type=int, default=96)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--backend", default="mpi", choices=["mpi", "torch"])
    p.add_argument("--max-ranks", type=int, default=4, help="skip the layouts of more ranks than this")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--h", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--w", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    from harness import print_scaling, run_worker
    rows = []
    common = ["--tokens", *map(str, a.tokens), "--channels", str(a.channels), "--batch", str(a.batch),
              "--reps", str(a.reps), "--backend", a.backend]
    for h, w in LAYOUTS:
        if h * w > a.max_ranks:
            continue
        rows += run_worker(__file__, h * w, [*common, "--h", str(h), "--w", str(w)])
    print_scaling(rows, "ms/call", ".2f",
                  f"rfft2+irfft2 of {a.batch} x {a.tokens[0]} x {a.tokens[1]} x {a.channels} fp32, "
                  f"backend {a.backend}")


if __name__ == "__main__":
    main()
