"""Named timing regions and communication accounting, exported as Chrome trace JSON and region summaries.

A :class:`Tracer` is passed explicitly (the process grid carries one). When disabled, ``region`` and
``comm`` return a shared no-op context, so instrumented code costs one attribute lookup and a call.
Communication backends call :meth:`Tracer.comm` around every collective with the bytes it sends.
Regions also become Score-P user regions when the ``scorep`` module is importable (run under
``python -m scorep --mpp=mpi ...``), and regions over CUDA work are timed with CUDA events that are
synchronised only when a summary or trace is asked for (regions opened during CUDA-graph capture are
skipped). :func:`write_traces` writes per-rank Chrome traces (open them in Perfetto) and per-region
summaries (JSON and CSV), combined over ranks on rank 0.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

_NULL = contextlib.nullcontext()


def _scorep_user():
    """The Score-P user-region module when Score-P's Python bindings are importable, else None."""
    try:
        import scorep.user as user  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means: no Score-P
        return None
    return user if hasattr(user, "region_begin") and hasattr(user, "region_end") else None


def _on_cuda(obj: Any) -> bool:
    """True when ``obj`` (a tensor, or a tuple/list of them) lives on a CUDA device."""
    if isinstance(obj, (tuple, list)):
        return any(_on_cuda(o) for o in obj[:4])
    return getattr(getattr(obj, "device", None), "type", None) == "cuda"


def _capturing() -> bool:
    """True while this thread's current CUDA stream is being captured into a graph (nothing runs then)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


class Tracer:
    """Collects (name, category, start, duration, bytes, thread) events of one rank.

    On a CUDA device (``bind_device``, or tensors handed to ``begin``) compute and comm regions are timed
    with CUDA events on the device's current stream, since host clocks only see kernel launches; IO
    regions keep the host clock. Regions opened while a CUDA graph is being captured are skipped and
    counted in ``skipped_in_capture``: capture runs nothing, and events cannot be recorded into it.
    """

    def __init__(self, enabled: bool = True, rank: int = 0, scorep: bool | None = None, cuda: bool | None = None,
                 clock=None):
        """``clock``: seconds function (default ``time.perf_counter``; ``time.thread_time`` measures this
        thread's CPU time, which other jobs on a shared machine do not disturb)."""
        self.enabled = enabled
        self.rank = rank
        # [name, category, start, duration (None while a CUDA event is pending), bytes, thread ident]
        self.events: list[list] = []
        self._thread = threading.get_ident()  # the rank's own thread (partition); others: e.g. a writer thread
        self._clock = clock or time.perf_counter
        self._t0 = self._clock()
        self._scorep = _scorep_user() if (enabled and scorep is not False) else None
        self._cuda = cuda  # None: CUDA events when bound to a CUDA device or the region's tensors are on a GPU
        self._device = None  # the CUDA device bound by bind_device
        self._pending: list[tuple[int, Any, Any]] = []  # (event index, start event, end event)
        self.skipped_in_capture = 0
        self._meter = None  # a hpc_fcn.memwatch.PhaseMeter fed by the outermost regions (watch_phases)
        self._phase_of = None
        self._phase_token = None

    def watch_phases(self, meter, phase_of) -> None:
        """Feed ``meter`` (a :class:`hpc_fcn.memwatch.PhaseMeter`): the outermost region of this rank's thread
        that ``phase_of(region name)`` maps to a phase opens that phase, and closes it when it ends."""
        self._meter, self._phase_of = meter, phase_of

    @property
    def scorep_active(self) -> bool:
        return self._scorep is not None

    def bind_device(self, device) -> None:
        """Time compute and comm regions with CUDA events on ``device`` when it is a GPU (the rank's device)."""
        if getattr(device, "type", None) == "cuda":
            self._device = device

    # ---- recording --------------------------------------------------------------------------
    def region(self, name: str, category: str = "compute"):
        """Time a block of code under ``name`` (no-op when disabled)."""
        if not self.enabled:
            return _NULL
        return self._timed(name, category, 0)

    def comm(self, name: str, nbytes: int):
        """Time a collective and record the bytes this rank sends."""
        if not self.enabled:
            return _NULL
        return self._timed(name, "comm", int(nbytes))

    def record(self, name: str, seconds: float, category: str = "compute", nbytes: int = 0) -> None:
        """Add an already measured interval that ends now."""
        if self.enabled:
            end = self._clock()
            self.events.append([name, category, end - seconds, seconds, int(nbytes), threading.get_ident()])

    def _event_stream(self, category: str, tensors: Any):
        """The CUDA stream to time this region on, or None for the host clock."""
        if self._cuda is False or category == "io":
            return None
        import torch
        if self._device is not None and (self._cuda or category in ("compute", "comm")):
            return torch.cuda.current_stream(self._device)
        if self._cuda or _on_cuda(tensors):
            dev = next((t.device for t in (tensors if isinstance(tensors, (tuple, list)) else [tensors])
                        if _on_cuda(t)), None)
            return torch.cuda.current_stream(dev)
        return None

    def begin(self, name: str, category: str = "compute", tensors: Any = None, nbytes: int = 0):
        """Open a region (for hooks that cannot use a ``with`` block); pass the token to :meth:`end`."""
        if not self.enabled:
            return None
        if _capturing():
            self.skipped_in_capture += 1
            return None
        if self._scorep is not None:
            self._scorep.region_begin(name)
        start_ev = None
        stream = self._event_stream(category, tensors)
        if stream is not None:
            import torch
            start_ev = torch.cuda.Event(enable_timing=True)
            start_ev.record(stream)
        token = (name, category, self._clock(), int(nbytes), start_ev, stream)
        if (self._meter is not None and self._phase_token is None and threading.get_ident() == self._thread):
            phase = self._phase_of(name)
            if phase is not None:
                self._phase_token = token
                self._meter.start(phase)
        return token

    def end(self, token, tensors: Any = None) -> None:
        """Close a region opened by :meth:`begin`."""
        if token is None:
            return
        if token is self._phase_token:
            self._phase_token = None
            self._meter.stop()
        name, category, start, nbytes, start_ev, stream = token
        if start_ev is not None:
            import torch
            end_ev = torch.cuda.Event(enable_timing=True)
            end_ev.record(stream)
            self._pending.append((len(self.events), start_ev, end_ev))
            self.events.append([name, category, start, None, nbytes, threading.get_ident()])
        else:
            self.events.append([name, category, start, self._clock() - start, nbytes, threading.get_ident()])
        if self._scorep is not None:
            self._scorep.region_end(name)

    @contextlib.contextmanager
    def _timed(self, name: str, category: str, nbytes: int) -> Iterator[None]:
        token = self.begin(name, category, nbytes=nbytes)
        try:
            yield
        finally:
            self.end(token)

    def _resolve(self) -> None:
        """Turn pending CUDA events into durations (waits for the last of them, at summary time)."""
        if not self._pending:
            return
        for idx, s, e in self._pending:
            e.synchronize()
            self.events[idx][3] = s.elapsed_time(e) / 1e3
        self._pending.clear()

    def reset(self) -> None:
        self._resolve()
        self.events.clear()

    # ---- reporting ---------------------------------------------------------------------------
    def summary(self) -> dict[str, dict[str, float]]:
        """Per region: call count, total seconds, total bytes, category."""
        self._resolve()
        out: dict[str, dict] = defaultdict(lambda: {"count": 0, "seconds": 0.0, "bytes": 0, "category": ""})
        for name, cat, _, dur, nbytes, _ in self.events:
            s = out[name]
            s["count"] += 1
            s["seconds"] += dur
            s["bytes"] += nbytes
            s["category"] = cat
        return dict(out)

    def category_seconds(self) -> dict[str, float]:
        self._resolve()
        tot: dict[str, float] = defaultdict(float)
        for _, cat, _, dur, _, _ in self.events:
            tot[cat] += dur
        return dict(tot)

    def now(self) -> float:
        """This tracer's clock (the one its events are on)."""
        return self._clock()

    def partition(self, start: float, end: float) -> dict[str, float]:
        """The seconds of [``start``, ``end``] (on :meth:`now`'s clock) of this rank's own thread, each counted
        under the category of the innermost region open then, and under 'other' where none is (Python between
        regions, waits outside any region): the parts are >= 0 and add up to ``end - start``.

        Innermost is the region opened last that is still open, so nested regions count once (the
        collectives inside a step are communication, the rest of the step compute). Regions of other threads
        (a writer thread) overlap this thread's time and are left out. Regions timed by CUDA events keep their
        host start and device duration, so on a GPU the split between them is approximate; the sum is not.
        """
        self._resolve()
        spans = sorted(((s, s + d, c) for _, c, s, d, _, th in self.events
                        if th == self._thread and s < end and s + d > start), key=lambda e: (e[0], -e[1]))
        out = {"compute": 0.0, "comm": 0.0, "io": 0.0, "other": 0.0}
        open_: list[tuple[float, str]] = []  # (end, category) of the regions opened so far, the last on top
        t = start

        def advance(to: float) -> None:  # count [t, to) under the innermost open region
            nonlocal t
            while t < to:
                while open_ and open_[-1][0] <= t:
                    open_.pop()
                if not open_:
                    out["other"] += to - t
                    t = to
                    return
                stop, cat = open_[-1]
                stop = min(stop, to)
                out[cat] = out.get(cat, 0.0) + (stop - t)
                t = stop

        for s, e, cat in spans:
            advance(max(s, start))
            open_.append((min(e, end), cat))
        advance(end)
        return out

    def chrome_events(self) -> list[dict]:
        self._resolve()
        tids: dict[int, int] = {self._thread: 0}  # this thread first, others (a writer) on tracks of their own
        return [{"name": n, "cat": c, "ph": "X", "ts": (s - self._t0) * 1e6, "dur": d * 1e6,
                 "pid": self.rank, "tid": tids.setdefault(th, len(tids)), "args": {"bytes": b} if b else {}}
                for n, c, s, d, b, th in self.events]

    def write_chrome(self, path: str | os.PathLike) -> Path:
        """Write a Chrome trace (open it in Perfetto or chrome://tracing)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = [{"name": "process_name", "ph": "M", "pid": self.rank, "args": {"name": f"rank {self.rank}"}}]
        path.write_text(json.dumps({"traceEvents": meta + self.chrome_events(), "displayTimeUnit": "ms",
                                    "otherData": {"rank": self.rank}}))
        return path


NULL_TRACER = Tracer(enabled=False)

_BLOCK = re.compile(r"^blocks\.\d+\.")


def region_kind(name: str) -> str:
    """Canonical region of an event name: ``blocks.3.mlp`` -> ``mlp``; ``fft/all_to_all@w`` -> ``fft``."""
    name = _BLOCK.sub("", name)
    return name.split("/", 1)[0] if "/" in name else name


def combine_summaries(per_rank: list[dict], meta: dict | None = None) -> dict:
    """One summary over ranks: per event name, calls, bytes and seconds (mean, max, per rank)."""
    names: dict[str, str] = {}
    for s in per_rank:
        for k, v in s.items():
            names.setdefault(k, v["category"])
    regions = {}
    for k, cat in names.items():
        secs = [s.get(k, {}).get("seconds", 0.0) for s in per_rank]
        regions[k] = {"category": cat, "kind": region_kind(k),
                      "count": max(s.get(k, {}).get("count", 0) for s in per_rank),
                      "bytes": sum(s.get(k, {}).get("bytes", 0) for s in per_rank),
                      "seconds_mean": sum(secs) / len(secs), "seconds_max": max(secs), "seconds_per_rank": secs}
    return {"meta": dict(meta or {}), "ranks": len(per_rank), "regions": regions}


def write_summary_csv(summary: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["region", "kind", "category", "count", "seconds_mean", "seconds_max", "bytes"])
        for k, v in sorted(summary["regions"].items()):
            wr.writerow([k, v["kind"], v["category"], v["count"], f"{v['seconds_mean']:.9f}",
                         f"{v['seconds_max']:.9f}", v["bytes"]])
    return path


def write_traces(tracer: Tracer, outdir: str | os.PathLike, comm=None, meta: dict | None = None) -> dict:
    """Write ``trace.rank{r}.json`` (Chrome) on every rank; on rank 0 also ``summary.json``/``summary.csv``
    combined over the ranks of ``comm`` (a Communicator, or an mpi4py communicator; None = this rank alone).

    Collective over ``comm``. Returns the combined summary on rank 0 and this rank's own elsewhere.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rank = comm.rank if comm is not None else tracer.rank
    tracer.write_chrome(outdir / f"trace.rank{rank}.json")
    own = tracer.summary()
    gathered = comm.gather(own, root=0) if comm is not None else [own]
    if rank != 0:
        return combine_summaries([own], meta)
    summary = combine_summaries(gathered, meta)
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1))
    write_summary_csv(summary, outdir / "summary.csv")
    return summary
