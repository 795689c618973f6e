"""DistributedAFNONet forward on 1, 2 and 4 ranks and several layouts: time per step, comm share.

    .venv/bin/python bench/dist_model.py [--img 360 720] [--embed 256] [--depth 2] [--reps 5] [--train]
                                         [--max-ranks 4]

The driver launches one ``mpirun`` per layout (those of at most ``--max-ranks`` ranks) and prints one
table; ratios are against 1 rank of the same run. ``--train`` times forward + backward + gradient
reduction instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYOUTS = [dict(), dict(h=2), dict(w=2), dict(matmul=2), dict(h=4), dict(h=2, w=2), dict(matmul=4),
           dict(h=2, matmul=2)]


def worker(a) -> None:
    import torch
    from mpi4py import MPI

    from hpc_fcn.model import AFNONet
    from hpc_fcn.parallel import ProcessGrid
    from harness import time_calls
    from hpc_fcn.parallel.model import DistributedAFNONet, scatter_field
    from hpc_fcn.tracing import Tracer
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    layout = json.loads(a.layout)
    kw = dict(img_size=tuple(a.img), patch_size=8, in_chans=20, out_chans=20, embed_dim=a.embed, depth=a.depth)
    with ProcessGrid(comm, **layout, backend=a.backend, tracer=Tracer(rank=comm.rank)) as grid:
        torch.manual_seed(0)
        model = DistributedAFNONet.from_serial(AFNONet(**kw), None, grid)
        x = scatter_field(grid, torch.randn(a.batch, 20, *a.img), a.img, 8)

        def step():
            if a.train:
                model.zero_grad(set_to_none=True)
                model(x).square().mean().backward()
                model.reduce_gradients()
            else:
                with torch.no_grad():
                    model(x)
        r = time_calls(step, grid.tracer, comm, a.reps)
    if comm.rank == 0:
        name = " x ".join(f"{k}{v}" for k, v in layout.items()) or "serial"
        Path(a.json).write_text(json.dumps([dict(r, ranks=comm.size, layout=name)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img", type=int, nargs=2, default=[360, 720])
    p.add_argument("--embed", type=int, default=256)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--train", action="store_true")
    p.add_argument("--backend", default="mpi", choices=["mpi", "torch"])
    p.add_argument("--max-ranks", type=int, default=4, help="skip the layouts of more ranks than this")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--layout", default="{}", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    from harness import print_scaling, run_worker
    common = ["--img", *map(str, a.img), "--embed", str(a.embed), "--depth", str(a.depth), "--batch", str(a.batch),
              "--reps", str(a.reps), "--backend", a.backend] + (["--train"] if a.train else [])
    rows = []
    for lay in LAYOUTS:
        n = 1
        for v in lay.values():
            n *= v
        if n > a.max_ranks:
            continue
        rows += run_worker(__file__, n, [*common, "--layout", json.dumps(lay)])
    what = "forward+backward+reduce" if a.train else "forward"
    print_scaling(rows, "ms/step", ".1f",
                  f"DistributedAFNONet {what}: batch {a.batch}, {a.img[0]} x {a.img[1]}, patch 8, embed {a.embed}, "
                  f"depth {a.depth}, fp32, backend {a.backend}")


if __name__ == "__main__":
    main()
