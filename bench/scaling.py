"""Member-steps per second at full size: the default CPU path against the published forward, and 2 ranks against 1.

    python bench/scaling.py [--members 1] [--repeats 2] [--variants published default-2t default-1t h2 ens2 w2]
                            [--img 720 1440] [--embed 768] [--depth 12] [--smoke] [--json OUT.json]

One ``tools/mpirun.sh -n 2`` runs every variant once untimed (first-call costs), then interleaved: ``--repeats``
rounds, each running every variant once (the order rotated from round to round), so a noisy machine disturbs all
of them alike. Random seeded
weights of the production network (720 x 1440, 20 channels, patch 8, embed 768, depth 12), fp32.

- ``published``: ``AFNONet.forward`` eager, one member at a time, rank 0 with 2 threads (rank 1 asleep);
- ``default-2t`` / ``default-1t``: the :class:`~hpc_fcn.forecaster.Forecaster` with the default inference
  config (fused path, members_per_pass 0 = auto), rank 0 with 2 threads / 1 thread (rank 1 asleep);
- ``h2`` / ``w2``: the Forecaster over a ``DistributedAFNONet`` split over 2 ranks (h=2 / w=2), 1 thread each;
- ``ens2``: ensemble=2, each rank steps ``--members`` members of its own with the default Forecaster, 1 thread.

Every variant but ens2 steps ``--members`` members per step (ens2: that many per rank). The table gives the
median seconds per step (slowest rank) and its spread over the rounds, member-steps/s, and the ratios: the
default against the published forward (same 2 threads), and each variant against one rank with 1 thread
(the scaling per core) and with 2 threads (the same 2 cores). ``--smoke``: a tiny model, one round.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("published", "default-2t", "default-1t", "h2", "ens2", "w2")
DEFAULT_VARIANTS = ("published", "default-2t", "default-1t", "h2", "ens2")
# variant -> (ranks, threads per rank)
SHAPE = {"published": (1, 2), "default-2t": (1, 2), "default-1t": (1, 1), "h2": (2, 1), "ens2": (2, 1), "w2": (2, 1)}
SMOKE = dict(img=[32, 64], embed=32, depth=1, members=1, repeats=1)


def wait_quietly(comm) -> None:
    """Barrier that sleeps instead of spinning, so a rank left out of a variant leaves the cores to the others."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.01)


def worker(a) -> None:
    import torch
    from mpi4py import MPI

    from hpc_fcn.forecaster import Forecaster
    from hpc_fcn.model import AFNONet
    from hpc_fcn.parallel import ProcessGrid
    from hpc_fcn.parallel.model import DistributedAFNONet, gather_field, scatter_field
    from hpc_fcn.parallel.testing import rel_err
    from hpc_fcn.schema import InferenceConfig

    comm = MPI.COMM_WORLD
    rank = comm.rank
    img = tuple(a.img)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = AFNONet(img_size=img, patch_size=8, in_chans=20, out_chans=20, embed_dim=a.embed, depth=a.depth).eval()
    x = torch.randn(2 * a.members, 20, *img)  # ens2's rank r steps members [r*M, (r+1)*M); the others the first M
    mine = x[:a.members]
    cfg = InferenceConfig()  # the defaults: device auto (cpu here), fp32, fused path, members_per_pass 0
    grids, runners = [], {}
    for name in a.variants:
        if name in ("h2", "w2"):
            grid = ProcessGrid(comm, ensemble=1, **{name[0]: 2})
            grids.append(grid)
            fc = Forecaster(DistributedAFNONet.from_serial(net, None, grid).eval(), cfg, grid=grid)
            xl = scatter_field(grid, mine, img, 8)
            runners[name] = (lambda fc=fc, xl=xl, grid=grid: gather_field(grid, fc.step(xl), img, 8), fc)
        elif name == "ens2":
            fc = Forecaster(net, cfg)
            xe = x[rank * a.members:(rank + 1) * a.members]
            runners[name] = (lambda fc=fc, xe=xe: fc.step(xe), fc)
        elif name == "published":
            def published():
                with torch.no_grad():
                    return torch.cat([net(mine[i:i + 1]) for i in range(mine.shape[0])])
            runners[name] = (published, None)
        else:
            fc = Forecaster(net, cfg)
            runners[name] = (lambda fc=fc: fc.step(mine), fc)

    def step(name):
        """One step of a variant on its ranks (the others sleep): (output or None, this rank's seconds)."""
        ranks, threads = SHAPE[name]
        comm.Barrier()
        y, dt = None, 0.0
        if rank < ranks:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            y = runners[name][0]()
            dt = time.perf_counter() - t0
            torch.set_num_threads(1)
        wait_quietly(comm)
        return y, dt

    times = {n: [] for n in a.variants}
    outputs, passes = {}, {}
    order = list(a.variants)
    for name in order:  # one untimed step each: first-call costs (page faults on fresh buffers, kernel setup)
        step(name)
    for r in range(a.repeats):
        for name in order[r % len(order):] + order[:r % len(order)]:  # rotate the order each round
            y, dt = step(name)
            if rank == 0 and r == 0:
                fc = runners[name][1]
                outputs[name] = y[:1].clone()  # member 0 on rank 0 in every variant
                passes[name] = fc.members_per_pass if fc is not None else 1
            times[name].append(comm.allreduce(dt, op=MPI.MAX))
            if rank == 0:
                print(f"round {r + 1}/{a.repeats} {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    for g in grids:
        g.close()
    if rank == 0:
        ref = outputs.get("published", outputs[a.variants[0]])
        rows = []
        for name in a.variants:
            ranks, threads = SHAPE[name]
            members = a.members * (2 if name == "ens2" else 1)
            med = statistics.median(times[name])
            rows.append(dict(variant=name, ranks=ranks, threads=threads, members=members,
                             members_per_pass=passes[name], seconds=times[name], median_s=med,
                             member_steps_per_s=members / med, rel_diff=rel_err(outputs[name], ref)))
        Path(a.json).write_text(json.dumps(rows))


def ratio(rows: dict, name: str, base: str) -> str:
    if name not in rows or base not in rows:
        return ""
    return f"{rows[name]['member_steps_per_s'] / rows[base]['member_steps_per_s']:.2f}x"


def print_table(rows: list[dict], a) -> None:
    by = {r["variant"]: r for r in rows}
    print(f"AFNONet {a.img[0]} x {a.img[1]}, 20 channels, patch 8, embed {a.embed}, depth {a.depth}, random seeded "
          f"weights, fp32; {a.members} member(s) per step (ens2: per rank); {a.repeats} round(s), variants "
          f"interleaved; medians of the slowest rank")
    print()
    print("| variant | ranks x threads | members/pass | s per step (median) | spread | member-steps/s "
          "| x published | x 1 rank 1 thread | x 1 rank 2 threads | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["seconds"]
        spread = (max(t) - min(t)) / r["median_s"] if r["median_s"] > 0 else 0.0
        print(f"| {r['variant']} | {r['ranks']} x {r['threads']} | {r['members_per_pass']} | {r['median_s']:.3g} "
              f"| {100 * spread:.0f}% | {r['member_steps_per_s']:.4f} | {ratio(by, r['variant'], 'published')} "
              f"| {ratio(by, r['variant'], 'default-1t')} | {ratio(by, r['variant'], 'default-2t')} "
              f"| {r['rel_diff']:.1e} |")
    print()
    print("spread: (max - min) / median over the rounds; max rel diff: member 0's output against the first "
          "variant's (max |diff| / max |ref|)")
    for name, base, what in (("default-2t", "published", "default vs published one at a time, 2 threads"),
                             ("h2", "default-1t", "h2 vs 1 rank x 1 thread"),
                             ("ens2", "default-1t", "ens2 vs 1 rank x 1 thread"),
                             ("h2", "default-2t", "h2 vs 1 rank x 2 threads"),
                             ("ens2", "default-2t", "ens2 vs 1 rank x 2 threads"),
                             ("w2", "default-1t", "w2 vs 1 rank x 1 thread")):
        if name in by and base in by:
            print(f"{what}: {ratio(by, name, base)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    p.add_argument("--members", type=int, default=1, help="members per step (ens2: per rank)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of every variant, interleaved")
    p.add_argument("--img", type=int, nargs=2, default=[720, 1440])
    p.add_argument("--embed", type=int, default=768)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--smoke", action="store_true", help="a tiny model, one round, every variant")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.members < 1 or a.repeats < 1:
        p.error("--members and --repeats must be >= 1")
    if a.worker:
        worker(a)
        return 0
    if a.smoke:
        for k, v in SMOKE.items():
            setattr(a, k, v)
        a.variants = list(VARIANTS)
    from harness import run_worker
    args = ["--variants", *a.variants, "--members", str(a.members), "--repeats", str(a.repeats),
            "--img", *map(str, a.img), "--embed", str(a.embed), "--depth", str(a.depth)]
    t0 = time.perf_counter()
    rows = run_worker(__file__, 2, args, timeout=3600)
    print_table(rows, a)
    print(f"wall {time.perf_counter() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
