"""One forward step of the production-size AFNONet decomposed over MPI ranks, checked against serial.

    tools/mpirun.sh -n 4 .venv/bin/python tools/check_production_step.py [--h 2 --w 2 --matmul 1]

Random weights (seeded), 720 x 1440 x 20 input, patch 8, embed 768, depth 12. Every rank runs its
part of the distributed step; rank 0 then runs the serial step and prints the max relative error
(max |diff| / max |serial|). Exit status 1 when it exceeds --tol (1e-5).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def wait_quietly(comm) -> None:
    """Barrier that sleeps instead of spinning, so the waiting ranks leave the cores to rank 0."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.05)


def main(argv) -> int:
    import torch
    from mpi4py import MPI

    from hpc_fcn.model import AFNONet
    from hpc_fcn.parallel import ProcessGrid
    from hpc_fcn.parallel.model import DistributedAFNONet, gather_field, scatter_field
    from hpc_fcn.parallel.testing import rel_err

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--h", type=int, default=2)
    p.add_argument("--w", type=int, default=2)
    p.add_argument("--matmul", type=int, default=1)
    p.add_argument("--backend", default="mpi", choices=["mpi", "torch"])
    p.add_argument("--img", type=int, nargs=2, default=[720, 1440])
    p.add_argument("--embed", type=int, default=768)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--serial-threads", type=int, default=0, help="threads for rank 0's serial step (0: all cores)")
    a = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    torch.set_num_threads(1)
    kw = dict(img_size=tuple(a.img), patch_size=8, in_chans=20, out_chans=20, embed_dim=a.embed, depth=a.depth)
    t0 = time.perf_counter()
    with ProcessGrid(comm, h=a.h, w=a.w, matmul=a.matmul, ensemble=1, backend=a.backend) as grid:
        torch.manual_seed(0)
        serial = AFNONet(**kw).eval()
        x = torch.randn(1, 20, *a.img)
        model = DistributedAFNONet.from_serial(serial, None, grid).eval()
        if comm.rank != 0:
            del serial
        xl = scatter_field(grid, x, a.img, 8)
        comm.Barrier()
        t1 = time.perf_counter()
        with torch.no_grad():
            yl = model(xl)
        t_dist = comm.allreduce(time.perf_counter() - t1, op=MPI.MAX)
        y = gather_field(grid, yl, a.img, 8)
        del model
    err = None
    if comm.rank == 0:
        torch.set_num_threads(a.serial_threads or os.cpu_count() or 1)
        t2 = time.perf_counter()
        with torch.no_grad():
            ref = serial(x)
        t_serial = time.perf_counter() - t2
        err = rel_err(y, ref)
        print(f"production step 1 x 20 x {a.img[0]} x {a.img[1]}, embed {a.embed}, depth {a.depth}: "
              f"{comm.size} ranks (h={a.h} w={a.w} matmul={a.matmul}, backend {a.backend}) {t_dist:.1f} s, "
              f"serial {t_serial:.1f} s, max relative error {err:.3e} (tol {a.tol:g}); "
              f"wall {time.perf_counter() - t0:.1f} s", flush=True)
    wait_quietly(comm)
    err = comm.bcast(err, root=0)
    return 0 if err <= a.tol else 1


if __name__ == "__main__":
    from hpc_fcn.runtime import main_guard
    sys.exit(main_guard(main))
