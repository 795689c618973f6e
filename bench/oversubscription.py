"""Oversubscription: the same ensemble on few ranks (one per core) and on more ranks than cores, with waiting ranks
spinning or yielding, and with compute slots.

    python bench/oversubscription.py [--config config/ens100.yaml] [--ranks 2 8] [--members 100] [--lead 3d]
                                     [--repeats 2] [--variants few-spin many-spin many-yield many-slots [few-yield]]
                                     [--set key=value ...]

Runs ``python -m hpc_fcn.ensemble CONFIG initial_conditions.count=1 ensemble.members=M forecast.lead_time=L`` through
tools/mpirun.sh (as ``make ensemble`` does) on the smaller rank count and on the larger one, each with
HPC_FCN_YIELD=0 (ranks waiting in a collective spin: MPICH's default) and HPC_FCN_YIELD=1 (they sleep: what
tools/mpirun.sh applies by itself when the ranks outnumber the cores), with compute slots off (HPC_FCN_SLOTS=0)
and, as ``many-slots``, on (HPC_FCN_SLOTS=1, opt-in: at most one rank per core runs a model step at once, the
others sleep; hpc_fcn/parallel/slots.py); by default the smaller count only spins (it does not
oversubscribe). The variants run interleaved, once per repeat, so a machine that gets busier slows all of
them alike. Throughput is the app's own (member-steps over the rollout's wall time, its "Timings" line); CPU s is
user + system time of the whole launch (start-up included). Prints one table (median over repeats) and the ratio
of the larger rank count, with slots, yielding and spinning, to the smaller one.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# variant: (the larger rank count?, HPC_FCN_YIELD, HPC_FCN_SLOTS, its name in the table and the ratio line)
VARIANTS = {"few-spin": (False, "0", "0", "spin", "spinning"), "few-yield": (False, "1", "0", "yield", "yielding"),
            "many-spin": (True, "0", "0", "spin", "spinning"), "many-yield": (True, "1", "0", "yield", "yielding"),
            "many-slots": (True, "1", "1", "yield + slots", "with slots")}
TIMINGS = re.compile(r"^Timings: (\d+) rank\(s\), wall ([\d.]+) s, ([\d.]+) member-steps/s", re.M)
RANK_ROW = re.compile(r"^\| \d+ \| \d+ \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", re.M)


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def launch(config: str, ranks: int, yield_: str, slots: str, overrides: list[str], outdir: Path,
           timeout: float) -> dict:
    """One run of the ensemble app on ``ranks`` ranks; its member-steps/s, wall and the launch's CPU seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HPC_FCN_YIELD=yield_, HPC_FCN_SLOTS=slots)
    # not a rank of an outer mpirun: the bench starts its own
    env = {k: v for k, v in env.items() if not k.startswith(("PMI_", "PMIX_", "MPI_LOCALNRANKS", "HYDRA_"))}
    cmd = [str(ROOT / "tools" / "mpirun.sh"), "-n", str(ranks), sys.executable, "-m", "hpc_fcn.ensemble", config,
           *overrides, f"output.dir={outdir}", "progress=false"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    m = TIMINGS.search(proc.stdout)
    if not m or int(m.group(1)) != ranks:
        raise SystemExit(f"no 'Timings: {ranks} rank(s)' line in the output of {' '.join(cmd)}:\n{proc.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # the Timings table's rows (compute, communication, IO, other, wall s per ensemble group): mean over the ranks
    table = proc.stdout[m.start():]
    table = table[:table.find("\n\n", table.find("| group |")) % (len(table) + 1)]
    parts = [tuple(map(float, row)) for row in RANK_ROW.findall(table)]
    compute, comm = (statistics.mean(p[i] for p in parts) if parts else float("nan") for i in (0, 1))
    return {"rate": float(m.group(3)), "wall": float(m.group(2)), "cpu": cpu, "launch": elapsed, "compute": compute,
            "comm": comm}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/ens100.yaml")
    ap.add_argument("--ranks", type=int, nargs=2, default=[2, 8], metavar=("FEW", "MANY"))
    ap.add_argument("--members", type=int, default=100, help="ensemble.members (100: make ensemble's)")
    ap.add_argument("--lead", default="3d", help="forecast.lead_time")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                    default=["few-spin", "many-spin", "many-yield", "many-slots"],
                    help="which of the four runs (few-spin, the baseline, always runs)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    args = ap.parse_args(argv)
    few, many = args.ranks
    if not 1 <= few < many:
        ap.error(f"--ranks {few} {many}: give the smaller rank count first, both at least 1")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    overrides = ["initial_conditions.count=1", f"ensemble.members={args.members}", f"forecast.lead_time={args.lead}",
                 "output.members=false", *args.set]
    chosen = [v for v in VARIANTS if v in set(args.variants) | {"few-spin"}]
    ranks_of = {v: many if VARIANTS[v][0] else few for v in chosen}
    results: dict[str, list[dict]] = {v: [] for v in chosen}
    with tempfile.TemporaryDirectory(prefix="bench_oversub_") as tmp:
        for rep in range(args.repeats):
            for v in chosen:
                _, y, slots, label, _ = VARIANTS[v]
                r = launch(args.config, ranks_of[v], y, slots, overrides, Path(tmp) / f"{v}{rep}", args.timeout)
                results[v].append(r)
                print(f"repeat {rep + 1}: {ranks_of[v]} ranks, {label}: {r['rate']:.1f} member-steps/s, "
                      f"rollout {r['wall']:.1f} s, launch {r['launch']:.1f} s, CPU {r['cpu']:.1f} s", flush=True)
    med = {v: statistics.median(r["rate"] for r in rs) for v, rs in results.items()}
    base = med["few-spin"]
    n = cores()
    print(f"\n{args.config} {' '.join(overrides)}: {args.members} members, lead {args.lead}, on {n} cores, "
          f"median of {args.repeats} interleaved repeat(s)\n")
    print("| ranks | waiting ranks | member-steps/s | runs | x " + f"{few} ranks | CPU s per launch | "
          "compute s / communication s per rank |")
    print("|---|---|---|---|---|---|---|")
    for v, rs in results.items():
        rates = ", ".join(f"{r['rate']:.1f}" for r in rs)
        print(f"| {ranks_of[v]} | {VARIANTS[v][3]} | {med[v]:.1f} | {rates} | "
              f"{med[v] / base:.2f}x | {statistics.median(r['cpu'] for r in rs):.1f} | "
              f"{statistics.median(r['compute'] for r in rs):.1f} / {statistics.median(r['comm'] for r in rs):.1f} |")
    ratios = [f"{med[v] / base:.2f}x {VARIANTS[v][4]}" for v in ("many-yield", "many-slots", "many-spin") if v in med]
    if ratios:
        print(f"\n{many} ranks / {few} ranks: {', '.join(ratios)} "
              f"({many} ranks {'outnumber' if many > n else 'do not outnumber'} the {n} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
