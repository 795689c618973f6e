"""Benchmark plumbing shared by bench/dist_*.py: run a worker under mpirun, time calls, read the tracer.

It lives in bench/, not in the library, because it runs the checkout's tools/mpirun.sh.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from hpc_fcn.tracing import Tracer

ROOT = Path(__file__).resolve().parents[1]  # the checkout: bench/ runs from it


def run_worker(script: str | Path, nranks: int, args: Sequence[str], timeout: float = 900) -> list[dict]:
    """Run ``script --worker --json FILE args`` on ``nranks`` ranks; return the JSON rows rank 0 wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        cmd = [str(ROOT / "tools" / "mpirun.sh"), "-n", str(nranks), sys.executable, str(script),
               "--worker", "--json", str(out), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def time_calls(fn: Callable[[], object], tracer: Tracer, comm, reps: int, warmup: int = 1) -> dict:
    """Median seconds per call (slowest rank) and the share of it spent in traced communication."""
    for _ in range(warmup):
        fn()
    times, comm_s = [], []
    for _ in range(reps):
        comm.Barrier()
        tracer.reset()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(comm.allreduce(dt, op=_max()))
        c = tracer.category_seconds().get("comm", 0.0)
        comm_s.append(comm.allreduce(c, op=_max()))
    nbytes = sum(v["bytes"] for v in tracer.summary().values() if v["category"] == "comm")
    med = statistics.median(times)
    return {"seconds": med, "comm_fraction": min(1.0, statistics.median(comm_s) / med) if med > 0 else 0.0,
            "comm_bytes_per_rank": nbytes}


def _max():
    from mpi4py import MPI
    return MPI.MAX


def print_table(rows: list[dict], columns: Sequence[tuple[str, str, str]], title: str) -> None:
    """Print rows as an aligned table; columns are (key, header, format)."""
    print(title)
    header = [h for _, h, _ in columns]
    cells = [[format(r[k], f) if f else str(r[k]) for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def print_scaling(rows: list[dict], time_label: str, time_fmt: str, title: str) -> None:
    """Time per call, speed-up against the first row, communication share and volume, as one table."""
    base = rows[0]["seconds"]
    for r in rows:
        r["ms"] = 1e3 * r["seconds"]
        r["speedup"] = base / r["seconds"]
        r["comm_pct"] = 100 * r["comm_fraction"]
        r["MB"] = r["comm_bytes_per_rank"] / 1e6
    print_table(rows, [("ranks", "ranks", ""), ("layout", "layout", ""), ("ms", time_label, time_fmt),
                       ("speedup", "speed-up vs 1", ".2f"), ("comm_pct", "comm %", ".1f"),
                       ("MB", "MB sent/rank", ".2f")], title)
