"""Resident memory of this process: now, its peak, and the peak of each phase of a run (Linux /proc).

``PhaseMeter`` times named phases and records the peak resident set of each: the kernel's high-water mark
(VmHWM) is reset when a phase begins (``/proc/self/clear_refs``, Linux >= 4.0) and read when it ends, so a
phase's peak is its own, not the process's so far. Where the mark cannot be reset the peaks are the
process's peak up to the end of the phase (``resettable`` says which), never less than the truth.

``python -m hpc_fcn.memwatch --json FILE -m MODULE ARGS...`` runs a module (as ``python -m``) and writes
this process's peak resident memory and wall time to FILE, with ``{rank}`` in FILE replaced by the MPI
rank from the launcher's environment: the peak per rank of any command of this package under mpirun.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import os
import resource
import runpy
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def _status_bytes(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes, or None where there is no such file (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident bytes of this process now (0 where unknown)."""
    return _status_bytes("VmRSS") or 0


def peak_rss() -> int:
    """Peak resident bytes since the process started, or since the last :func:`reset_peak` that worked."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB (macOS bytes: rare here)


def reset_peak() -> bool:
    """Set the peak back to the current resident set; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library, not Linux)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> int:
    """Give the heap's free pages back to the kernel; returns the resident bytes released (0 where unknown).

    glibc keeps freed blocks under its mmap threshold (at most 32 MB) in the heap, so a process's resident set
    stays at its highest point between phases; ``malloc_trim(0)`` returns every free page of every arena.
    """
    trim = _malloc_trim()
    if trim is None:
        return 0
    before = current_rss()
    trim(0)
    return max(0, before - current_rss())


class PhaseMeter:
    """Wall seconds and peak resident bytes of named phases; a phase entered twice accumulates its seconds
    and keeps the larger peak. Phases nest: a parent's peak includes its children's."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self.seconds: dict[str, float] = {}
        self.peak: dict[str, int] = {}
        self._stack: list[list] = []  # [name, start, peak so far]
        self.resettable = reset_peak()

    def add(self, name: str, seconds: float, peak: int) -> None:
        """Record a phase measured elsewhere (e.g. start-up, from the process's start time)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)
        self.peak[name] = max(self.peak.get(name, 0), int(peak))

    def start(self, name: str) -> None:
        """Begin phase ``name`` (inside the one open now, if any); end it with :meth:`stop`."""
        if self._stack:  # what the parent reached before this child began
            self._stack[-1][2] = max(self._stack[-1][2], peak_rss())
        self.resettable = reset_peak() and self.resettable
        self._stack.append([name, self._clock(), 0])

    def stop(self) -> str:
        """End the phase begun last; returns its name."""
        name, start, seen = self._stack.pop()
        top = max(seen, peak_rss())
        self.add(name, self._clock() - start, top)
        if self._stack:
            self._stack[-1][2] = max(self._stack[-1][2], top)
            reset_peak()
        return name

    @property
    def current(self) -> str | None:
        """The phase open now (the innermost), or None."""
        return self._stack[-1][0] if self._stack else None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop()

    def as_dict(self) -> dict:
        return {"seconds": dict(self.seconds), "peak_bytes": dict(self.peak), "resettable": self.resettable}


def process_seconds() -> float:
    """Wall seconds since this process started (its start time in /proc/self/stat), or 0 where unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def launcher_rank() -> int:
    """This process's rank as the MPI launcher or Slurm set it in the environment (0 when launched alone)."""
    for var in RANK_VARIABLES:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("-m") if "-m" in argv else len(argv)  # everything after -m MODULE is the module's
    p = argparse.ArgumentParser(prog="python -m hpc_fcn.memwatch", usage="%(prog)s --json FILE -m MODULE [ARGS...]",
                                description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, metavar="FILE", help="where to write the peak ({rank}: the MPI rank)")
    a = p.parse_args(argv[:cut])
    if cut + 1 >= len(argv):
        p.error("give the module to run: -m MODULE [ARGS...]")
    a.module, a.args = argv[cut + 1], argv[cut + 2:]
    out = Path(a.json.replace("{rank}", str(launcher_rank())))
    t0 = time.perf_counter()
    sys.argv = [a.module] + list(a.args)
    code: int | str | None = 0
    try:
        runpy.run_module(a.module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    finally:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rank": launcher_rank(), "peak_rss_bytes": peak_rss(),
                                   "wall_s": time.perf_counter() - t0, "exit": code if isinstance(code, int) else 1}))
    return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
