"""Named timing regions and communication accounting, exported as Chrome trace JSON.

A :class:`Tracer` is passed explicitly (the process grid carries one). When disabled, ``region``
returns a shared no-op context, so instrumented code costs one attribute lookup and a call.
Communication backends call :meth:`Tracer.comm` around every collective with the bytes it moves.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

_NULL = contextlib.nullcontext()


class Tracer:
    def __init__(self, enabled: bool = True, rank: int = 0):
        self.enabled = enabled
        self.rank = rank
        self.events: list[tuple[str, str, float, float, int]] = []  # name, category, start, duration, bytes
        self._t0 = time.perf_counter()

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
            end = time.perf_counter()
            self.events.append((name, category, end - seconds, seconds, int(nbytes)))

    @contextlib.contextmanager
    def _timed(self, name: str, category: str, nbytes: int) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.events.append((name, category, start, time.perf_counter() - start, nbytes))

    def reset(self) -> None:
        self.events.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per region: call count, total seconds, total bytes, category."""
        out: dict[str, dict] = defaultdict(lambda: {"count": 0, "seconds": 0.0, "bytes": 0, "category": ""})
        for name, cat, _, dur, nbytes in self.events:
            s = out[name]
            s["count"] += 1
            s["seconds"] += dur
            s["bytes"] += nbytes
            s["category"] = cat
        return dict(out)

    def category_seconds(self) -> dict[str, float]:
        tot: dict[str, float] = defaultdict(float)
        for _, cat, _, dur, _ in self.events:
            tot[cat] += dur
        return dict(tot)

    def chrome_events(self) -> list[dict]:
        return [{"name": n, "cat": c, "ph": "X", "ts": (s - self._t0) * 1e6, "dur": d * 1e6,
                 "pid": self.rank, "tid": 0, "args": {"bytes": b} if b else {}}
                for n, c, s, d, b in self.events]

    def write_chrome(self, path: str | os.PathLike) -> Path:
        """Write a Chrome trace (open it in Perfetto or chrome://tracing)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"traceEvents": self.chrome_events(), "displayTimeUnit": "ms",
                                    "otherData": {"rank": self.rank}}))
        return path


NULL_TRACER = Tracer(enabled=False)
